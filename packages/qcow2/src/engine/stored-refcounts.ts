import type { Qcow2Header } from '../format/header.js';
import { getRefcounts, getRefcountUnchecked, refcountEntriesPerBlock, setRefcount } from '../format/refcount-block.js';
import { REFCOUNT_TABLE_RESERVED_LO, decodeRefcountTableEntries, refcountBlockOffset, type RefcountTableEntries } from '../format/refcount-table.js';
import { readZeroPadded, type Storage } from '../io/storage.js';
import { hexAlt, type CheckProblemKind } from './check-report.js';
import type { ImageLayout } from './image-layout.js';
import { RefcountBlockCache, type RefcountBlock } from './refcount-block-cache.js';

/** peek()'s answer when the refcount block is not in memory yet. */
export const NOT_CACHED = Symbol('not cached');

/** Blocks a check keeps in memory; a repair writes the changed ones back when it drops them. */
const CHECK_BLOCK_CACHE_LIMIT = 64;

/**
 * The refcounts stored in the image as qemu-img check reads them (qcow2_get_refcount): no table entry or a zero
 * entry means 0, reserved bits are ignored, an unaligned block offset makes the refcount unreadable (reported
 * once, and with a repair the image is marked corrupt, as qemu does), and a block past the end of the file reads
 * as zeros. Repairs write through it, so later reads see the fixed values. The table and block codecs are
 * format/refcount-table.ts and format/refcount-block.ts, the block cache refcount-block-cache.ts: the same as the
 * allocator's (refcounts.ts); what is the check's own here is this tolerance.
 */
export class StoredRefcounts {
  readonly entriesPerBlock: number;
  private readonly blocks: RefcountBlockCache;
  private signaled = false;
  /** The last block looked up: scans ask for neighbouring clusters. */
  private lastIndex = -1;
  private lastBlock: RefcountBlock | undefined;

  constructor(
    private readonly storage: Storage,
    private readonly layout: ImageLayout,
    readonly table: RefcountTableEntries,
    private readonly report: (kind: CheckProblemKind, text: string) => void,
    /** Read-write (a repair): qemu marks the image corrupt on disk when a block cannot be read. */
    private readonly markCorrupt: (() => Promise<void>) | undefined = undefined,
  ) {
    this.entriesPerBlock = refcountEntriesPerBlock(layout.clusterSize, layout.refcountBits);
    this.blocks = new RefcountBlockCache(storage, layout.clusterSize, CHECK_BLOCK_CACHE_LIMIT, 'write-back', (index) => this.blockOffset(index));
  }

  static async load(
    storage: Storage,
    layout: ImageLayout,
    header: Qcow2Header,
    report: (kind: CheckProblemKind, text: string) => void,
    markCorrupt?: () => Promise<void>,
  ): Promise<StoredRefcounts> {
    const bytes = new Uint8Array(header.refcountTableClusters * layout.clusterSize);
    await readZeroPadded(storage, bytes, header.refcountTableOffset);
    return new StoredRefcounts(storage, layout, decodeRefcountTableEntries(bytes), report, markCorrupt);
  }

  /** Host offset of refcount block `index` (reserved bits masked), 0 when none. */
  blockOffset(index: number): number {
    if (index >= this.table.hi.length) return 0;
    return refcountBlockOffset(this.table.hi[index]!, this.table.lo[index]!);
  }

  /** Whether the table entry of block `index` names an offset that is not cluster aligned. */
  private unaligned(index: number): boolean {
    return (this.table.lo[index]! & (this.layout.clusterSize - 1) & ~REFCOUNT_TABLE_RESERVED_LO) !== 0;
  }

  /** The block of `index` when cached (or known to be absent); NOT_CACHED when it must be loaded. */
  private cachedBlock(index: number): RefcountBlock | undefined | 'unaligned' | typeof NOT_CACHED {
    if (index === this.lastIndex) return this.lastBlock;
    if (this.blockOffset(index) === 0) return undefined;
    if (this.signaled && this.unaligned(index)) return 'unaligned';
    const block = this.blocks.get(index);
    if (block === undefined) return NOT_CACHED;
    this.lastIndex = index;
    this.lastBlock = block;
    return block;
  }

  private async block(index: number): Promise<RefcountBlock | undefined | 'unaligned'> {
    const cached = this.cachedBlock(index);
    if (cached !== NOT_CACHED) return cached;
    if (this.unaligned(index)) {
      if (!this.signaled) {
        this.signaled = true;
        const what = `Refblock offset ${hexAlt(this.blockOffset(index))} unaligned (reftable index: ${hexAlt(index)})`;
        if (this.markCorrupt === undefined) {
          this.report('refcount-unreadable', `qcow2: Image is corrupt: ${what}; further non-fatal corruption events will be suppressed`);
        } else {
          this.report('refcount-unreadable', `qcow2: Marking image as corrupt: ${what}; further corruption events will be suppressed`);
          await this.markCorrupt();
        }
      }
      return 'unaligned';
    }
    // Loading may write back and drop other blocks; the one looked up last is always the one loaded.
    const block = await this.blocks.load(index, this.blockOffset(index), (bytes, offset) => readZeroPadded(this.storage, bytes, offset));
    this.lastIndex = index;
    this.lastBlock = block;
    return block;
  }

  private valueIn(block: RefcountBlock, cluster: number): number {
    // Garbage above 2^53 in a 64-bit refcount stays a (large, inexact) number rather than an exception: it is
    // reported, not used.
    return getRefcountUnchecked(block.view, cluster % this.entriesPerBlock, this.layout.refcountBits);
  }

  /**
   * The stored refcount of `cluster` without waiting, when its block is cached: a number, undefined when it
   * cannot be read, or NOT_CACHED (then call get()). Hot loops use this to avoid a promise per cluster.
   */
  peek(cluster: number): number | undefined | typeof NOT_CACHED {
    const block = this.cachedBlock(Math.floor(cluster / this.entriesPerBlock));
    if (block === NOT_CACHED) return NOT_CACHED;
    if (block === undefined) return 0;
    if (block === 'unaligned') return undefined;
    return this.valueIn(block, cluster);
  }

  /**
   * The stored refcounts of clusters [start, start + out.length), which lie in one block, into `out`: false when
   * they cannot be read that way (an unaligned block, 64-bit refcounts); then ask get() cluster by cluster.
   */
  async getRange(start: number, out: Uint32Array): Promise<boolean> {
    if (this.layout.refcountBits === 64) return false;
    const block = await this.block(Math.floor(start / this.entriesPerBlock));
    if (block === 'unaligned') return false;
    if (block === undefined) out.fill(0);
    else getRefcounts(block.view, start % this.entriesPerBlock, this.layout.refcountBits, out);
    return true;
  }

  /** The stored refcount of `cluster`, or undefined when it cannot be read. */
  async get(cluster: number): Promise<number | undefined> {
    const block = await this.block(Math.floor(cluster / this.entriesPerBlock));
    if (block === undefined) return 0;
    if (block === 'unaligned') return undefined;
    return this.valueIn(block, cluster);
  }

  /** Sets a stored refcount in its (existing, aligned) block; written back by flush(). False when impossible. */
  async set(cluster: number, value: number): Promise<boolean> {
    const block = await this.block(Math.floor(cluster / this.entriesPerBlock));
    if (block === undefined || block === 'unaligned') return false;
    setRefcount(block.view, cluster % this.entriesPerBlock, this.layout.refcountBits, value);
    block.dirty = true;
    return true;
  }

  /** Writes the blocks changed by set(). */
  async flush(): Promise<void> {
    await this.blocks.flush();
  }
}
