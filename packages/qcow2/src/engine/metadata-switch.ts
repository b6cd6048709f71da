import { Qcow2Error } from '../errors.js';
import { MAX_REFCOUNT_TABLE_BYTES } from '../format/constants.js';
import { adjustRefcounts, getRefcount, maxRefcount, refcountEntriesPerBlock, refcountWords, scanFree } from '../format/refcount-block.js';
import type { SnapshotEntry } from '../format/snapshot-table.js';
import { encodeRefcountTable } from '../format/refcount-table.js';
import { viewOf } from '../format/struct.js';
import { WRITE_CHUNK } from '../io/write-size.js';
import { writeHeaderFields } from './header-rewrite.js';
import type { Qcow2Image } from './qcow2-image.js';
import type { Refcounts } from './refcounts.js';

/**
 * A metadata switch: a change to refcounts, the active L1 table and the snapshot table that must become visible
 * all at once. Snapshot create, delete and apply are such changes: each moves the refcount of every cluster a
 * snapshot reaches AND the COPIED flags of the active tables, and qemu-img check calls a COPIED flag that
 * disagrees with the refcount on disk a corruption, in both directions. Written in place, in any order, some
 * prefix on disk shows such a disagreement (qemu's own snapshot create and delete do, when killed between their
 * refcount and L2 writes).
 *
 * So nothing in use is written. Every changed refcount block gets a copy at a new place, the refcount table a
 * new copy pointing at them, the active L2 tables whose entries change new copies, the active L1 a new copy,
 * the snapshot table a new copy — all in clusters that are free both in the refcounts on disk and in the new
 * ones. Then ONE write of the header's fields from size to snapshots_offset (size, l1_size, l1_table_offset,
 * refcount_table_offset, refcount_table_clusters, nb_snapshots, snapshots_offset: bytes 24..71) switches from the old image to the new one:
 *
 * - killed before that write, the file is the old image exactly: the new clusters are referenced by nothing and
 *   counted nowhere (not even a leak);
 * - killed after it, the file is the new image, complete: the old copies are free in the new refcounts.
 *
 * A 48-byte write inside the first page is atomic against a process kill (the page cache takes it whole), and
 * a sector is the unit a disk writes. With flushes enabled (not cache=unsafe), the storage is flushed before the
 * switch (new structures durable before the header names them) and after it (the header durable before the old
 * clusters, now free, are reused).
 */

/** Largest write of new clusters at once. */
const MAX_WRITE = WRITE_CHUNK;

export interface SwitchTarget {
  /** Virtual disk size after the switch. */
  size: number;
  /** The new active L1 table (l1_size entries) and where it was written (unchanged offset: the old table stays). */
  l1: Uint8Array;
  l1TableOffset: number;
  /** The new snapshot table, when it changes: entries, where it was written, its encoded length. */
  snapshots?: { entries: SnapshotEntry[]; offset: number; tableBytes: number };
}

function bytesOf(view: DataView): Uint8Array {
  return new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
}

export class MetadataSwitch {
  private readonly clusterSize: number;
  private readonly refcountBits: number;
  private readonly entriesPerBlock: number;
  private readonly max: number;
  private readonly oldTable: readonly number[];
  /** Refcount blocks as they are on disk (read once), by block index. */
  private readonly oldBlocks = new Map<number, DataView>();
  /** The new refcount blocks: a copy of every block that changes, by block index. */
  private readonly newBlocks = new Map<number, { bytes: Uint8Array; view: DataView }>();
  /** Allocation cursors: single clusters, and runs (so one small hole is not rescanned for every run). */
  private singleCursor = 0;
  private runCursor = 0;
  private fileEnd: number;
  private committed = false;
  /** peek()'s last block: its index, the view it read, and the new block there was then (a new one invalidates). */
  private peekedIndex = -1;
  private peekedView: DataView | undefined;
  private peekedNew: DataView | undefined;

  constructor(
    private readonly image: Qcow2Image,
    private readonly refcounts: Refcounts,
  ) {
    if (refcounts.hasDirtyBlocks) throw new Error('metadata switch started with refcount blocks not written back');
    this.clusterSize = image.layout.clusterSize;
    this.refcountBits = image.layout.refcountBits;
    this.entriesPerBlock = refcountEntriesPerBlock(this.clusterSize, this.refcountBits);
    this.max = maxRefcount(this.refcountBits);
    this.oldTable = [...refcounts.blockOffsets];
    this.fileEnd = image.fileSize;
  }

  /** Clusters the file holds (a cluster past this is referenced by a corrupt entry). */
  get fileClusters(): number {
    return Math.ceil(this.image.fileSize / this.clusterSize);
  }

  private async oldBlock(blockIndex: number): Promise<DataView | undefined> {
    const offset = this.oldTable[blockIndex] ?? 0;
    if (offset === 0) return undefined;
    let view = this.oldBlocks.get(blockIndex);
    if (view === undefined) {
      if (offset + this.clusterSize > this.image.fileSize) {
        throw new Qcow2Error('TRUNCATED', `refcount block at 0x${offset.toString(16)} lies past the end of the file`, { file: this.image.name });
      }
      const bytes = new Uint8Array(this.clusterSize);
      await this.image.storage.read(bytes, offset);
      view = viewOf(bytes);
      this.oldBlocks.set(blockIndex, view);
    }
    return view;
  }

  private async oldRefcount(cluster: number): Promise<number> {
    const view = await this.oldBlock(Math.floor(cluster / this.entriesPerBlock));
    return view === undefined ? 0 : getRefcount(view, cluster % this.entriesPerBlock, this.refcountBits);
  }

  /** The refcount of `cluster` after the switch. */
  async get(cluster: number): Promise<number> {
    const block = this.newBlocks.get(Math.floor(cluster / this.entriesPerBlock));
    if (block !== undefined) return getRefcount(block.view, cluster % this.entriesPerBlock, this.refcountBits);
    return this.oldRefcount(cluster);
  }

  /** Reads the refcount block that counts `cluster`, so peek() answers for it without waiting. */
  async load(cluster: number): Promise<void> {
    await this.oldBlock(Math.floor(cluster / this.entriesPerBlock));
  }

  /** The refcount of `cluster` after the switch, when its block is in memory (see load()); else undefined. */
  peek(cluster: number): number | undefined {
    const blockIndex = Math.floor(cluster / this.entriesPerBlock);
    // Scans ask for neighbouring clusters: the last block found answers most of them.
    if (blockIndex === this.peekedIndex && this.peekedView !== undefined && this.newBlocks.get(blockIndex)?.view === this.peekedNew) {
      return getRefcount(this.peekedView, cluster % this.entriesPerBlock, this.refcountBits);
    }
    const fresh = this.newBlocks.get(blockIndex)?.view;
    const view = fresh ?? this.oldBlocks.get(blockIndex);
    this.peekedIndex = blockIndex;
    this.peekedView = view;
    this.peekedNew = fresh;
    if (view !== undefined) return getRefcount(view, cluster % this.entriesPerBlock, this.refcountBits);
    return (this.oldTable[blockIndex] ?? 0) === 0 ? 0 : undefined;
  }

  private async newBlock(blockIndex: number): Promise<DataView> {
    let block = this.newBlocks.get(blockIndex);
    if (block === undefined) {
      if (blockIndex >= MAX_REFCOUNT_TABLE_BYTES / 8) {
        throw new Qcow2Error('REFCOUNT_TABLE_TOO_LARGE', 'the refcount table would exceed 8 MiB', { file: this.image.name });
      }
      const old = await this.oldBlock(blockIndex);
      const bytes = new Uint8Array(this.clusterSize);
      if (old !== undefined) bytes.set(new Uint8Array(old.buffer, old.byteOffset, old.byteLength));
      block = { bytes, view: viewOf(bytes) };
      this.newBlocks.set(blockIndex, block);
    }
    return block.view;
  }

  /** Adds `delta` to the new refcount of clusters [cluster, cluster+count). */
  async adjust(cluster: number, count: number, delta: number): Promise<void> {
    if (this.committed) throw new Error('metadata switch already committed');
    const end = cluster + count;
    for (let c = cluster; c < end; ) {
      const blockIndex = Math.floor(c / this.entriesPerBlock);
      const view = await this.newBlock(blockIndex);
      const first = blockIndex * this.entriesPerBlock;
      const blockEnd = Math.min(end, first + this.entriesPerBlock);
      // One synchronous loop per block; it stops at an entry that would leave the refcount range.
      const bad = adjustRefcounts(view, c - first, blockEnd - first, this.refcountBits, delta, this.max);
      if (bad >= 0) {
        const at = first + bad;
        if (getRefcount(view, bad, this.refcountBits) + delta < 0) throw new Qcow2Error('BAD_HEADER', `refcount of cluster ${at} would drop below zero`, { file: this.image.name });
        throw new Qcow2Error('BAD_ARGUMENT', `refcount of cluster ${at} would overflow ${this.refcountBits} bits`, { file: this.image.name });
      }
      c = blockEnd;
    }
  }

  /**
   * Allocates `count` contiguous clusters (new refcount 1) that are free before the switch AND after it — the
   * only clusters this switch may write — and returns the offset of the first. Scans block by block.
   */
  async allocate(count: number): Promise<number> {
    let start = count > 1 ? Math.max(this.runCursor, this.singleCursor) : this.singleCursor;
    let run = 0;
    for (let c = start; run < count; ) {
      const blockIndex = Math.floor(c / this.entriesPerBlock);
      const blockEnd = (blockIndex + 1) * this.entriesPerBlock;
      const old = await this.oldBlock(blockIndex);
      const fresh = this.newBlocks.get(blockIndex)?.view;
      if (old === undefined && fresh === undefined) {
        if (run === 0) start = c;
        run += blockEnd - c;
        c = blockEnd;
        continue;
      }
      const oldWords = old === undefined ? undefined : refcountWords(bytesOf(old), this.refcountBits);
      const freshWords = fresh === undefined ? undefined : refcountWords(bytesOf(fresh), this.refcountBits);
      if ((old === undefined || oldWords !== undefined) && (fresh === undefined || freshWords !== undefined)) {
        // Whole entries as words: runs of free clusters found by synchronous scans of the block.
        const words = this.refcountBits === 64 ? 2 : 1;
        const first = blockIndex * this.entriesPerBlock;
        while (c < blockEnd && run < count) {
          if (run === 0) {
            c = first + scanFree(oldWords, freshWords, c - first, blockEnd - first, words, true);
            if (c >= blockEnd) break;
            start = c;
          }
          const busy = first + scanFree(oldWords, freshWords, c - first, Math.min(blockEnd, c + count - run) - first, words, false);
          run += busy - c;
          c = busy;
          if (run < count && c < blockEnd) {
            run = 0;
            c++;
          }
        }
        continue;
      }
      for (; c < blockEnd && run < count; c++) {
        const index = c % this.entriesPerBlock;
        const free =
          (old === undefined || getRefcount(old, index, this.refcountBits) === 0) &&
          (fresh === undefined || getRefcount(fresh, index, this.refcountBits) === 0);
        if (!free) {
          run = 0;
          continue;
        }
        if (run === 0) start = c;
        run++;
      }
    }
    if (count > 1) this.runCursor = start + count;
    else this.singleCursor = start + 1;
    await this.adjust(start, count, 1);
    return start * this.clusterSize;
  }

  /** Writes new bytes into clusters this switch allocated (nothing on disk refers to them yet). */
  async write(bytes: Uint8Array, offset: number): Promise<void> {
    for (let at = 0; at < bytes.length; at += MAX_WRITE) {
      await this.image.storage.write(bytes.subarray(at, Math.min(bytes.length, at + MAX_WRITE)), offset + at);
    }
    this.fileEnd = Math.max(this.fileEnd, offset + bytes.length);
  }

  /** Drops one reference from `count` clusters at `offset` in the new refcounts (the old ones keep them). */
  async free(offset: number, count: number): Promise<void> {
    if (count > 0) await this.adjust(offset / this.clusterSize, count, -1);
  }

  /**
   * Places the new refcount blocks and table, writes them, and switches the header to the new image. Each new
   * block lives in a cluster it (or another new block) counts; each replaced block and the old table are free
   * in the new refcounts. Placing a block can touch another block, so this runs to a fixpoint.
   */
  async commit(target: SwitchTarget): Promise<void> {
    const { clusterSize } = this;
    const header = this.image.header;
    const placed = new Map<number, number>();
    const oldTableOffset = this.refcounts.refcountTableOffset;
    const oldTableClusters = this.refcounts.refcountTableClusters;
    let tableStart = -1;
    let tableClusters = 0;
    let oldTableFreed = false;
    for (;;) {
      const unplaced = [...this.newBlocks.keys()].filter((b) => !placed.has(b));
      if (unplaced.length > 0) {
        for (const b of unplaced) {
          placed.set(b, (await this.allocate(1)) / clusterSize);
          const old = this.oldTable[b] ?? 0;
          if (old !== 0) await this.free(old, 1);
        }
        continue;
      }
      const entries = Math.max(this.oldTable.length, Math.max(-1, ...this.newBlocks.keys()) + 1);
      const needed = Math.max(oldTableClusters, Math.ceil((entries * 8) / clusterSize));
      if (needed * clusterSize > MAX_REFCOUNT_TABLE_BYTES) {
        throw new Qcow2Error('REFCOUNT_TABLE_TOO_LARGE', 'the refcount table would exceed 8 MiB', { file: this.image.name });
      }
      if (tableStart < 0 || needed > tableClusters) {
        if (tableStart >= 0) await this.adjust(tableStart, tableClusters, -1);
        tableStart = (await this.allocate(needed)) / clusterSize;
        tableClusters = needed;
        continue;
      }
      if (!oldTableFreed) {
        await this.free(oldTableOffset, oldTableClusters);
        oldTableFreed = true;
        continue;
      }
      break;
    }
    for (const [b, cluster] of placed) await this.write(this.newBlocks.get(b)!.bytes, cluster * clusterSize);
    const table: number[] = [];
    for (let i = 0; i < (tableClusters * clusterSize) / 8; i++) table.push(placed.has(i) ? placed.get(i)! * clusterSize : (this.oldTable[i] ?? 0));
    await this.write(encodeRefcountTable(table, tableClusters * clusterSize), tableStart * clusterSize);
    this.committed = true;

    const snapshots = target.snapshots ?? { entries: [...this.image.snapshots], offset: header.snapshotsOffset, tableBytes: this.image.snapshotTableBytes };
    // Everything new is durable before the header names it, and the header before old clusters are reused.
    await this.image.storage.flush();
    await writeHeaderFields(this.image.storage, header, {
      size: target.size,
      l1Size: target.l1.length / 8,
      l1TableOffset: target.l1TableOffset,
      refcountTableOffset: tableStart * clusterSize,
      refcountTableClusters: tableClusters,
      nbSnapshots: snapshots.entries.length,
      snapshotsOffset: snapshots.offset,
    });
    await this.image.storage.flush();

    this.image.replaceActiveL1(target.l1);
    this.image.replaceSnapshots(snapshots.entries, snapshots.tableBytes);
    this.image.l2Cache.clear();
    this.image.invalidateCompressedCache();
    this.image.fileReaches(this.fileEnd);
    this.refcounts.adopt(tableStart * clusterSize, tableClusters, table);
  }
}
