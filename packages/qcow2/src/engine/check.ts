import { Qcow2Error } from '../errors.js';
import { checkBitmapEntryConstraints, decodeBitmapDirectory, type BitmapDirectoryEntry } from '../format/bitmap-directory.js';
import { AutoclearFeature, MAX_L1_BYTES, MAX_SNAPSHOTS, MAX_SNAPSHOT_EXTRA_DATA, MAX_SNAPSHOT_TABLE_BYTES } from '../format/constants.js';
import { bitmapsExtensionOf } from '../format/header-extensions.js';
import { HEADER_PROBE_BYTES, decodeHeader, hasBit, probeClusterBits, type Qcow2Header } from '../format/header.js';
import { bitmapTableEntryValid } from '../format/bitmap-table.js';
import { getRefcount, getRefcounts, refcountEntriesPerBlock } from '../format/refcount-block.js';
import {
  ALLOC_BITMAP_AT,
  COMPRESSED_HI,
  COPIED_HI,
  ZERO_BITMAP_AT,
  ZERO_LO,
  compressedAdditionalSectors,
  compressedOffsetHigh,
  compressedSpan,
  entryHostOffset,
  l1ReservedBits,
  l2ReservedBits,
  withCopied,
} from '../format/table-entries.js';
import { readZeroPadded, type Storage } from '../io/storage.js';
import { countPlainDataClusters, firstRefcountMismatch, skipRightCopiedFlags, type ClusterRun } from './check-scan.js';
import { layoutOf, validateForIo, validateHeader, type ImageLayout } from './image-layout.js';
import type { Qcow2Image } from './qcow2-image.js';

/**
 * qemu-img check for qcow2 (qemu 7.2's block/qcow2-refcount.c and qcow2-snapshot.c, rules re-derived, not
 * copied): rebuild the reference count of every host cluster from the metadata, compare it with the stored
 * refcounts, and check what qemu checks on the way (entry alignment, reserved bits, COPIED flags, references
 * past the end of the file, subcluster bitmaps, refcount blocks, snapshot and bitmap tables).
 *
 * The rules, exactly as qemu applies them:
 * - Counted once per reference: cluster 0 (the header); each L1 table (active and every snapshot's, l1_size * 8
 *   bytes); each L2 table once per L1 entry naming it (an L2 table shared by the active L1 and a snapshot counts
 *   twice); each normal or zero-allocated data cluster (`[offset, offset + cluster_size)`, so a misaligned entry
 *   touches two clusters), except with an external data file; each compressed cluster over
 *   `[coffset, coffset + (nb_sectors * 512 - (coffset & 511)))`, i.e. every host cluster touched by the sectors
 *   `[coffset & ~511, (coffset & ~511) + nb_sectors * 512)`; the snapshot table (up to the end of the last
 *   entry's name); the refcount table (all its clusters); every refcount block; and, when the bitmaps autoclear
 *   bit is set, the bitmap directory, each bitmap table and every bitmap data cluster.
 * - A region ending one cluster or more past the end of the file is not counted: it is a corruption.
 * - VM state needs nothing special: it is guest data mapped through the snapshot's own L1 table.
 * - Fragmentation, allocation and compression statistics come from the active L1 only.
 *
 * Memory is bounded by the file: one counter per host cluster in a typed array, never per guest cluster.
 */

/** One line of what the check found or did, as qemu prints it on stderr, with a machine-readable kind. */
export interface CheckMessage {
  kind: CheckProblemKind;
  /** qemu's line, without the trailing newline. */
  text: string;
}

/** What a check message is about (refcounts, L1/L2 tables, snapshots, bitmaps, a repair). */
export type CheckProblemKind =
  /** A cluster's refcount is higher than its references ("Leaked cluster"). */
  | 'leak'
  /** A cluster's refcount is lower than its references ("ERROR cluster ... refcount=... reference=..."). */
  | 'refcount-too-low'
  | 'refcount-overflow'
  /** A stored refcount could not be read (its refcount block offset is unaligned). */
  | 'refcount-unreadable'
  | 'copied-flag'
  | 'reserved-bits'
  | 'misaligned'
  | 'past-end-of-file'
  | 'subcluster-bitmap'
  | 'compressed-cluster'
  | 'refcount-block'
  | 'snapshot'
  | 'bitmap'
  /** Progress of a repair: "Rebuilding refcount structure" and qemu's refusals. */
  | 'repair';

/** A check's findings, in qemu-img check's terms (corruptions, leaks, check errors, cluster counts). */
export interface CheckReport {
  /** The image's name (its storage name). */
  filename: string;
  /** qcow2, or vmdk/vhdx for the reports the CLI makes from their devices' checks. */
  format: 'qcow2' | 'vmdk' | 'vhdx';
  /** Internal errors (qemu's check-errors): the check could not look at everything. */
  checkErrors: number;
  corruptions: number;
  leaks: number;
  corruptionsFixed: number;
  leaksFixed: number;
  /** One past the last cluster in use, in bytes (0 when nothing is in use). */
  imageEndOffset: number;
  /** Guest clusters: ceil(virtual size / cluster size). */
  totalClusters: number;
  allocatedClusters: number;
  fragmentedClusters: number;
  compressedClusters: number;
  /** Everything found (and repaired), in qemu's order and words. */
  messages: CheckMessage[];
  /**
   * Set when the check stopped before the end (qemu-img prints "Check failed: <failure>", no report, and exits
   * 1): the reason in qemu's words (strerror), such as "Input/output error". The counts are partial.
   */
  failure: string | undefined;
}

/** Options of a check or repair: a message callback and the bound on host clusters counted. */
export interface CheckOptions {
  /** Called with each message as it is found (the report keeps them all as well). */
  onMessage?: (message: CheckMessage) => void;
  /**
   * The most host clusters (file size / cluster size) the check will hold a counter for; larger files are
   * refused with a clear error rather than exhausting memory. Default 2^28 (1 GiB of counters).
   */
  maxClusters?: number;
}

export const DEFAULT_MAX_CHECK_CLUSTERS = 2 ** 28;

/** Fixed bytes of a snapshot table entry. */
const SNAPSHOT_HEADER_BYTES = 40;
/** The v3 minimum of extra data in a snapshot entry: vm_state_size_large and disk_size. */
const V3_MIN_SNAPSHOT_EXTRA = 16;
const TWO_32 = 0x100000000;

/** Thrown inside the check to stop it the way qemu's `goto fail` does; turned into report.failure. */
export class CheckAbort extends Error {
  constructor(readonly reason: string) {
    super(reason);
  }
}

/** C's %lx of a 64-bit value given as halves. */
export function hex64(hi: number, lo: number): string {
  return hi === 0 ? (lo >>> 0).toString(16) : (hi >>> 0).toString(16) + (lo >>> 0).toString(16).padStart(8, '0');
}

/** C's %#lx: "0" for zero, else 0x-prefixed. */
function hexAlt(value: number | bigint): string {
  return value === 0 || value === 0n ? '0' : `0x${value.toString(16)}`;
}

/** Counters as qemu keeps them in BdrvCheckResult. */
export interface CheckCounters {
  checkErrors: number;
  corruptions: number;
  leaks: number;
  corruptionsFixed: number;
  leaksFixed: number;
  allocatedClusters: number;
  fragmentedClusters: number;
  compressedClusters: number;
}

export function zeroCounters(): CheckCounters {
  return {
    checkErrors: 0,
    corruptions: 0,
    leaks: 0,
    corruptionsFixed: 0,
    leaksFixed: 0,
    allocatedClusters: 0,
    fragmentedClusters: 0,
    compressedClusters: 0,
  };
}

/**
 * The computed reference count of every host cluster (qemu's in-memory refcount table). One u32 per cluster;
 * with 64-bit refcounts a count that reaches 2^32 - 1 continues in a small side map, so no width is lost.
 */
export class ReferenceCounts {
  private counts: Uint32Array;
  private overflow: Map<number, number> | undefined;
  /** Clusters the comparison covers (qemu's nb_clusters): the file's clusters, grown by references past it. */
  size: number;

  constructor(
    size: number,
    private readonly limit: number,
    readonly max: number,
  ) {
    this.size = size;
    this.counts = new Uint32Array(Math.min(limit, size + 1));
  }

  /**
   * The counters themselves, for scans: entry i is cluster i's count, or 0xffffffff when it may continue in the
   * overflow map (then ask get()).
   */
  get raw(): Uint32Array {
    return this.counts;
  }

  get(cluster: number): number {
    if (cluster >= this.counts.length) return 0;
    const base = this.counts[cluster]!;
    return base === 0xffffffff && this.overflow !== undefined ? base + (this.overflow.get(cluster) ?? 0) : base;
  }

  /** Makes room for `size` clusters (qemu's realloc_refcount_array); false when that exceeds the limit. */
  grow(size: number): boolean {
    if (size <= this.size) return true;
    if (size > this.limit) return false;
    if (size > this.counts.length) {
      const grown = new Uint32Array(Math.min(this.limit, Math.max(size, Math.ceil(this.counts.length * 1.25))));
      grown.set(this.counts);
      this.counts = grown;
    }
    this.size = size;
    return true;
  }

  /** Adds one reference; false when the count is already at the refcount maximum (qemu's overflow). */
  increment(cluster: number): boolean {
    const value = this.get(cluster);
    if (value >= this.max) return false;
    if (this.counts[cluster]! < 0xffffffff) {
      this.counts[cluster] = this.counts[cluster]! + 1;
    } else {
      this.overflow ??= new Map();
      this.overflow.set(cluster, (this.overflow.get(cluster) ?? 0) + 1);
    }
    return true;
  }

  /** Sets a count directly (a freshly allocated structure counts 1). */
  set(cluster: number, value: number): void {
    if (value >= 0xffffffff) {
      this.counts[cluster] = 0xffffffff;
      this.overflow ??= new Map();
      this.overflow.set(cluster, value - 0xffffffff);
    } else {
      this.counts[cluster] = value;
      this.overflow?.delete(cluster);
    }
  }

  clear(size: number): void {
    if (size + 1 > this.counts.length) this.counts = new Uint32Array(Math.min(this.limit, size + 1));
    this.counts.fill(0);
    this.overflow = undefined;
    this.size = size;
  }
}

/** In the stored-refcount copy compareRefcounts keeps: not known there, ask the refcount block. */
const UNKNOWN_REFCOUNT = 0xffffffff;

/** peek()'s answer when the refcount block is not in memory yet. */
export const NOT_CACHED = Symbol('not cached');

/** One loaded refcount block of the stored refcounts. */
interface LoadedBlock {
  bytes: Uint8Array;
  view: DataView;
  dirty: boolean;
}

/** Refcount table entries as stored: reserved bits included, offsets in halves. */
export interface RefcountTableEntries {
  hi: Uint32Array;
  lo: Uint32Array;
}

/**
 * The refcounts stored in the image, read as qemu's qcow2_get_refcount does: no table entry or a zero entry
 * means 0, reserved bits are ignored, an unaligned block offset makes the refcount unreadable, and a block
 * past the end of the file reads as zeros. Repairs write through it, so later reads see the fixed values.
 */
export class StoredRefcounts {
  readonly entriesPerBlock: number;
  private readonly blocks = new Map<number, LoadedBlock>();
  private signaled = false;
  private lastIndex = -1;
  private lastBlock: LoadedBlock | undefined;

  constructor(
    private readonly storage: Storage,
    private readonly layout: ImageLayout,
    readonly table: RefcountTableEntries,
    private readonly report: (kind: CheckProblemKind, text: string) => void,
    /** Read-write (a repair): qemu marks the image corrupt on disk when a block cannot be read. */
    private readonly markCorrupt: (() => Promise<void>) | undefined = undefined,
  ) {
    this.entriesPerBlock = refcountEntriesPerBlock(layout.clusterSize, layout.refcountBits);
  }

  static async load(
    storage: Storage,
    layout: ImageLayout,
    header: Qcow2Header,
    report: (kind: CheckProblemKind, text: string) => void,
    markCorrupt?: () => Promise<void>,
  ): Promise<StoredRefcounts> {
    const entries = (header.refcountTableClusters * layout.clusterSize) / 8;
    const bytes = new Uint8Array(entries * 8);
    await readZeroPadded(storage, bytes, header.refcountTableOffset);
    const view = new DataView(bytes.buffer);
    const hi = new Uint32Array(entries);
    const lo = new Uint32Array(entries);
    for (let i = 0; i < entries; i++) {
      hi[i] = view.getUint32(i * 8);
      lo[i] = view.getUint32(i * 8 + 4);
    }
    return new StoredRefcounts(storage, layout, { hi, lo }, report, markCorrupt);
  }

  /** Host offset of refcount block `index` (reserved bits masked), 0 when none. */
  blockOffset(index: number): number {
    if (index >= this.table.hi.length) return 0;
    return this.table.hi[index]! * TWO_32 + ((this.table.lo[index]! & 0xfffffe00) >>> 0);
  }

  /** The block of `index` when cached (or known to be absent); NOT_CACHED when it must be loaded. */
  private cachedBlock(index: number): LoadedBlock | undefined | 'unaligned' | typeof NOT_CACHED {
    if (index === this.lastIndex) return this.lastBlock;
    if (index >= this.table.hi.length || (this.table.hi[index] === 0 && (this.table.lo[index]! & 0xfffffe00) === 0)) return undefined;
    if ((this.table.lo[index]! & (this.layout.clusterSize - 1) & ~0x1ff) !== 0 && this.signaled) return 'unaligned';
    const block = this.blocks.get(index);
    if (block === undefined) return NOT_CACHED;
    this.lastIndex = index;
    this.lastBlock = block;
    return block;
  }

  private async block(index: number): Promise<LoadedBlock | undefined | 'unaligned'> {
    const cached = this.cachedBlock(index);
    if (cached !== NOT_CACHED) return cached;
    const offset = this.blockOffset(index);
    if ((this.table.lo[index]! & (this.layout.clusterSize - 1) & ~0x1ff) !== 0) {
      if (!this.signaled) {
        this.signaled = true;
        const what = `Refblock offset ${hexAlt(offset)} unaligned (reftable index: ${hexAlt(index)})`;
        if (this.markCorrupt === undefined) {
          this.report('refcount-unreadable', `qcow2: Image is corrupt: ${what}; further non-fatal corruption events will be suppressed`);
        } else {
          this.report('refcount-unreadable', `qcow2: Marking image as corrupt: ${what}; further corruption events will be suppressed`);
          await this.markCorrupt();
        }
      }
      return 'unaligned';
    }
    await this.evict();
    const bytes = new Uint8Array(this.layout.clusterSize);
    await readZeroPadded(this.storage, bytes, offset);
    const block = { bytes, view: new DataView(bytes.buffer), dirty: false };
    this.blocks.set(index, block);
    this.lastIndex = index;
    this.lastBlock = block;
    return block;
  }

  private async evict(): Promise<void> {
    if (this.blocks.size < 64) return;
    for (const [index, block] of this.blocks) {
      if (block.dirty) await this.writeBlock(index, block);
      this.blocks.delete(index);
      if (index === this.lastIndex) this.lastIndex = -1;
      if (this.blocks.size < 64) return;
    }
  }

  private valueIn(block: LoadedBlock, cluster: number): number {
    const at = cluster % this.entriesPerBlock;
    if (this.layout.refcountBits === 64) {
      // Garbage above 2^53 stays a (large, inexact) number rather than an exception: it is reported, not used.
      return block.view.getUint32(at * 8) * TWO_32 + block.view.getUint32(at * 8 + 4);
    }
    return getRefcount(block.view, at, this.layout.refcountBits);
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
    const index = Math.floor(cluster / this.entriesPerBlock);
    const block = await this.block(index);
    if (block === undefined || block === 'unaligned') return false;
    const at = cluster % this.entriesPerBlock;
    const bits = this.layout.refcountBits;
    if (bits === 64) {
      block.view.setUint32(at * 8, Math.floor(value / TWO_32));
      block.view.setUint32(at * 8 + 4, value >>> 0);
    } else if (bits >= 8) {
      if (bits === 8) block.view.setUint8(at, value);
      else if (bits === 16) block.view.setUint16(at * 2, value);
      else block.view.setUint32(at * 4, value);
    } else {
      const bit = at * bits;
      const mask = ((1 << bits) - 1) << (bit & 7);
      const byte = block.view.getUint8(bit >>> 3);
      block.view.setUint8(bit >>> 3, (byte & ~mask) | ((value << (bit & 7)) & mask));
    }
    block.dirty = true;
    return true;
  }

  private async writeBlock(index: number, block: LoadedBlock): Promise<void> {
    await this.storage.write(block.bytes, this.blockOffset(index));
    block.dirty = false;
  }

  /** Writes the blocks changed by set(). */
  async flush(): Promise<void> {
    for (const [index, block] of this.blocks) if (block.dirty) await this.writeBlock(index, block);
  }
}

/** A snapshot table entry as the check needs it. */
export interface CheckedSnapshot {
  l1TableOffset: number;
  l1Size: number;
  id: string;
  name: string;
  extraDataSize: number;
}

interface BitmapsToCount {
  directoryOffset: number;
  directorySize: number;
  nbBitmaps: number;
}

/**
 * One check pass over an image, in qemu's order. The `fix*` flags and the `repair*` hooks are what a repair
 * (engine/repair.ts) overrides; here every hook declines, so nothing is written.
 */
export class ImageChecker {
  header!: Qcow2Header;
  layout!: ImageLayout;
  fileSize = 0;
  refs!: ReferenceCounts;
  stored!: StoredRefcounts;
  snapshots: CheckedSnapshot[] = [];
  snapshotTableSize = 0;
  res: CheckCounters = zeroCounters();
  /** Corruptions found in the snapshot table itself (qemu counts them apart, to rewrite the table). */
  snapshotCorruptions = 0;
  rebuild = false;
  highestCluster = 0;
  /** Clusters counted for the refcount table and blocks (a rebuild replaces these references). */
  refcountStructureRefs: number[] = [];
  /**
   * Regions that start inside the file but end a cluster or more past it: not counted (qemu's rule), although
   * their first clusters are in use. A repair must not free those clusters.
   */
  truncatedRegions: Array<{ offset: number; size: number }> = [];
  readonly messages: CheckMessage[] = [];
  /**
   * The stored refcounts as the last compareRefcounts read them (kept current through its repairs), so
   * checkOflagCopied looks them up instead of asking per entry; undefined for 64-bit refcounts.
   */
  private storedCopy: Uint32Array | undefined;
  /** One cluster-sized buffer for the L2 tables the passes read one after the other. */
  private tableBuffer: Uint8Array | undefined;
  fixLeaks = false;
  fixErrors = false;
  protected readonly maxClusters: number;

  constructor(
    readonly storage: Storage,
    readonly name: string,
    protected readonly options: CheckOptions = {},
  ) {
    this.maxClusters = options.maxClusters ?? DEFAULT_MAX_CHECK_CLUSTERS;
  }

  get clusterSize(): number {
    return this.layout.clusterSize;
  }

  message(kind: CheckProblemKind, text: string): void {
    const message = { kind, text };
    this.messages.push(message);
    this.options.onMessage?.(message);
  }

  /** Reads the header and the refcount table afresh from the file (a repair may have moved them). */
  async load(): Promise<void> {
    this.fileSize = await this.storage.size();
    this.storedCopy = undefined;
    const probe = new Uint8Array(Math.min(this.fileSize, HEADER_PROBE_BYTES));
    await this.storage.read(probe, 0);
    const clusterBits = probeClusterBits(probe);
    const cluster0 = new Uint8Array(Math.min(this.fileSize, 2 ** clusterBits));
    await this.storage.read(cluster0, 0);
    this.header = decodeHeader(cluster0);
    this.layout = layoutOf(this.header);
    // What Qcow2Image.open checks, except the snapshot table: qemu-img check examines that itself.
    validateHeader({ ...this.header, nbSnapshots: 0 }, this.layout, this.fileSize);
    validateForIo(this.header, this.layout);
    this.stored = await StoredRefcounts.load(this.storage, this.layout, this.header, (kind, text) => this.message(kind, text), this.markCorrupt());
  }

  /**
   * The part of [offset, offset+size) that lies inside the file, in whole 8-byte entries; what lies past the end
   * reads as zeros, so a table claiming more than the file holds costs no memory.
   */
  async readInFile(offset: number, size: number): Promise<Uint8Array> {
    const inFile = Math.max(0, Math.min(size, this.fileSize - offset));
    const bytes = new Uint8Array(Math.ceil(inFile / 8) * 8);
    await readZeroPadded(this.storage, bytes, offset);
    return bytes;
  }

  /** Clusters the file spans (qemu's size_to_clusters of its length). */
  fileClusters(): number {
    return Math.ceil(this.fileSize / this.clusterSize);
  }

  /** A fresh counter array for the file; refuses files too large to check within the memory bound. */
  newReferenceCounts(): ReferenceCounts {
    const clusters = this.fileClusters();
    if (clusters > this.maxClusters) {
      throw new Qcow2Error(
        'OUT_OF_RANGE',
        `image file too large to check: ${clusters} clusters of ${this.clusterSize} bytes, more than the ${this.maxClusters} this check holds in memory`,
        { file: this.name },
      );
    }
    const bits = this.layout.refcountBits;
    return new ReferenceCounts(clusters, this.maxClusters + 1, bits >= 53 ? Number.MAX_SAFE_INTEGER : 2 ** bits - 1);
  }

  // ---------------------------------------------------------------------------------------------------------
  // Snapshot table (qcow2_check_read_snapshot_table)

  async readSnapshotTable(): Promise<void> {
    const { nbSnapshots, snapshotsOffset } = this.header;
    this.snapshots = [];
    this.snapshotTableSize = 0;
    if (nbSnapshots > MAX_SNAPSHOTS || snapshotsOffset % this.clusterSize !== 0) {
      // Qcow2Image.open refuses these; a caller that checks a raw storage gets qemu's error.
      this.res.checkErrors++;
      this.message('snapshot', nbSnapshots > MAX_SNAPSHOTS ? 'ERROR snapshot table too large' : 'ERROR snapshot table offset invalid');
      throw new CheckAbort(nbSnapshots > MAX_SNAPSHOTS ? 'File too large' : 'Invalid argument');
    }
    if (nbSnapshots === 0) return;
    const reader = new SequentialReader(this.storage, snapshotsOffset);
    let position = 0;
    for (let i = 0; i < nbSnapshots; i++) {
      position = (position + 7) & ~7;
      const fixed = await reader.read(position, SNAPSHOT_HEADER_BYTES);
      const view = new DataView(fixed.buffer, fixed.byteOffset, fixed.byteLength);
      const l1Hi = view.getUint32(0);
      const l1Lo = view.getUint32(4);
      const l1Size = view.getUint32(8);
      const idSize = view.getUint16(12);
      const nameSize = view.getUint16(14);
      const extraDataSize = view.getUint32(36);
      if (extraDataSize > MAX_SNAPSHOT_EXTRA_DATA) {
        this.res.checkErrors++;
        this.message('snapshot', `ERROR failed to read the snapshot table: Too much extra metadata in snapshot table entry ${i}`);
        throw new CheckAbort('File too large');
      }
      const idStart = position + SNAPSHOT_HEADER_BYTES + extraDataSize;
      const id = new TextDecoder().decode(await reader.read(idStart, idSize));
      const name = new TextDecoder().decode(await reader.read(idStart + idSize, nameSize));
      position = idStart + idSize + nameSize;
      if (position > MAX_SNAPSHOT_TABLE_BYTES) {
        this.res.checkErrors++;
        this.message('snapshot', 'ERROR failed to read the snapshot table: Snapshot table is too big');
        throw new CheckAbort('File too large');
      }
      this.snapshots.push({ l1TableOffset: l1Hi * TWO_32 + l1Lo, l1Size, id, name, extraDataSize });
    }
    this.snapshotTableSize = position;
    if (this.header.version >= 3) {
      this.snapshots.forEach((snapshot, i) => {
        if (snapshot.extraDataSize < V3_MIN_SNAPSHOT_EXTRA) {
          this.snapshotCorruptions++;
          this.message('snapshot', `${this.fixErrors ? 'Repairing' : 'ERROR'} snapshot table entry ${i} is incomplete`);
        }
      });
    }
  }

  // ---------------------------------------------------------------------------------------------------------
  // Counting references (calculate_refcounts)

  /**
   * qemu's qcow2_inc_refcounts_imrt: one reference to every cluster touched by [offset, offset+size). A region
   * ending a cluster or more past the end of the file is a corruption and is not counted.
   */
  incRefcounts(offset: number | bigint, size: number, record?: number[]): void {
    if (size <= 0) return;
    const cs = this.clusterSize;
    // The common case, one aligned cluster inside the file (every data cluster and L2 table): one counter.
    if (record === undefined && size === cs && typeof offset === 'number' && offset % cs === 0 && offset < this.fileSize && this.refs.increment(offset / cs)) return;
    if (typeof offset === 'bigint' || offset + size - this.fileSize >= cs) {
      if (typeof offset === 'number' && offset < this.fileSize) this.truncatedRegions.push({ offset, size });
      this.message(
        'past-end-of-file',
        `ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset 0x${offset.toString(16)} size 0x${size.toString(16)}`,
      );
      this.res.corruptions++;
      return;
    }
    const first = Math.floor(offset / cs);
    const last = Math.floor((offset + size - 1) / cs);
    for (let k = first; k <= last; k++) {
      if (k >= this.refs.size && !this.refs.grow(k + 1)) {
        this.res.checkErrors++;
        throw new CheckAbort('Cannot allocate memory');
      }
      if (this.refs.increment(k)) {
        record?.push(k);
      } else {
        this.message('refcount-overflow', `ERROR: overflow cluster offset=0x${(k * cs).toString(16)}`);
        this.message(
          'refcount-overflow',
          'Use qemu-img amend to increase the refcount entry width or qemu-img convert to create a clean copy if the image cannot be opened for writing',
        );
        this.res.corruptions++;
      }
    }
  }

  /** Header, active L1, snapshots, snapshot table, refcount table, bitmaps, refcount blocks. */
  async calculateRefcounts(): Promise<void> {
    this.refcountStructureRefs = [];
    this.truncatedRegions = [];
    this.incRefcounts(0, this.clusterSize);
    await this.checkL1(this.header.l1TableOffset, this.header.l1Size, true, true);
    if (this.layout.externalDataFile && this.snapshots.length > 0) {
      this.message('snapshot', `ERROR ${this.snapshots.length} snapshots in image with data file`);
      this.res.corruptions++;
    }
    for (const sn of this.snapshots) {
      if (sn.l1TableOffset % this.clusterSize !== 0) {
        this.message(
          'snapshot',
          `ERROR snapshot ${sn.id} (${sn.name}) l1_offset=${hexAlt(sn.l1TableOffset)}: L1 table is not cluster aligned; snapshot table entry corrupted`,
        );
        this.res.corruptions++;
        continue;
      }
      if (sn.l1Size > MAX_L1_BYTES / 8) {
        this.message('snapshot', `ERROR snapshot ${sn.id} (${sn.name}) l1_size=${hexAlt(sn.l1Size)}: L1 table is too large; snapshot table entry corrupted`);
        this.res.corruptions++;
        continue;
      }
      await this.checkL1(sn.l1TableOffset, sn.l1Size, false, false);
    }
    this.incRefcounts(this.header.snapshotsOffset, this.snapshotTableSize);
    this.countRefcountTable();
    await this.countBitmaps();
    await this.checkRefblocks();
  }

  countRefcountTable(): void {
    this.incRefcounts(this.header.refcountTableOffset, this.header.refcountTableClusters * this.clusterSize, this.refcountStructureRefs);
  }

  private async checkL1(l1Offset: number, l1Size: number, fragInfo: boolean, active: boolean): Promise<void> {
    if (l1Size === 0) return;
    this.incRefcounts(l1Offset, l1Size * 8);
    // Entries past the end of the file read as zeros (unused): only the part inside the file is read.
    const l1 = await this.readInFile(l1Offset, l1Size * 8);
    const view = new DataView(l1.buffer);
    for (let i = 0; i < l1.length / 8; i++) {
      const hi = view.getUint32(i * 8);
      const lo = view.getUint32(i * 8 + 4);
      if (hi === 0 && lo === 0) continue;
      if (l1ReservedBits(hi, lo)) {
        this.message('reserved-bits', `ERROR found L1 entry with reserved bits set: ${hex64(hi, lo)}`);
        this.res.corruptions++;
      }
      const l2Offset = entryHostOffset(hi, lo);
      this.incRefcounts(l2Offset, this.clusterSize);
      if (l2Offset % this.clusterSize !== 0) {
        this.message('misaligned', `ERROR l2_offset=${l2Offset.toString(16)}: Table is not cluster aligned; L1 entry corrupted`);
        this.res.corruptions++;
      }
      await this.checkL2(l2Offset, fragInfo, active);
    }
  }

  /** The buffer the passes read L2 tables into, one table at a time (no garbage of a cluster per table). */
  private l2Buffer(): Uint8Array {
    if (this.tableBuffer?.length !== this.clusterSize) this.tableBuffer = new Uint8Array(this.clusterSize);
    return this.tableBuffer;
  }

  private async checkL2(l2Offset: number, fragInfo: boolean, active: boolean): Promise<void> {
    const { clusterSize, clusterBits, l2Entries, l2EntryBytes, extendedL2, externalDataFile } = this.layout;
    const table = this.l2Buffer();
    await readZeroPadded(this.storage, table, l2Offset);
    const view = new DataView(table.buffer);
    // Fragmentation statistics (active L1 only), shared by the scan and the general path.
    const run: ClusterRun = { next: 0, allocated: 0, fragmented: 0 };
    // Plain data clusters (a 200 GiB image has 3.2 million) are counted by a synchronous scan of the table; the
    // general path below takes the entries it stops at. Standard L2 entries without an external data file only.
    const scan = !extendedL2 && !externalDataFile;
    const countBelow = Math.min(this.refs.max, 0xfffffffe);
    for (let i = 0; i < l2Entries; i++) {
      if (scan) {
        i = countPlainDataClusters(view, i, l2Entries, clusterBits, this.fileSize, this.refs.raw, countBelow, fragInfo ? run : undefined);
        if (i >= l2Entries) break;
      }
      const at = i * l2EntryBytes;
      let hi = view.getUint32(at);
      const lo = view.getUint32(at + 4);
      // Extended L2: the second word's high half is the zero bitmap, its low half the allocation bitmap.
      const zeroBits = extendedL2 ? view.getUint32(at + ZERO_BITMAP_AT) : 0;
      const allocBits = extendedL2 ? view.getUint32(at + ALLOC_BITMAP_AT) : 0;
      const compressed = (hi & COMPRESSED_HI) !== 0;
      const copied = (hi & COPIED_HI) !== 0;
      const offset = entryHostOffset(hi, lo);
      let type: 'compressed' | 'zero-alloc' | 'zero-plain' | 'normal' | 'unallocated';
      if (compressed) type = 'compressed';
      else if ((lo & ZERO_LO) !== 0 && !extendedL2) type = offset !== 0 ? 'zero-alloc' : 'zero-plain';
      else if (offset === 0) type = externalDataFile && copied ? 'normal' : 'unallocated';
      else type = 'normal';

      if (type !== 'compressed' && l2ReservedBits(hi, lo)) {
        this.message('reserved-bits', `ERROR found l2 entry with reserved bits set: ${hex64(hi, lo)}`);
        this.res.corruptions++;
      }
      switch (type) {
        case 'compressed': {
          // An offset above 2^53 (hostile) stays exact as a bigint: it is reported, never used.
          const hiOffset = compressedOffsetHigh(hi, clusterBits);
          const coffset: number | bigint = hiOffset > 0x1fffff ? (BigInt(hiOffset) << 32n) | BigInt(lo >>> 0) : hiOffset * TWO_32 + (lo >>> 0);
          if (copied) {
            this.message('compressed-cluster', `ERROR: coffset=0x${coffset.toString(16)}: copied flag must never be set for compressed clusters`);
            hi = withCopied(hi, false);
            this.res.corruptions++;
          }
          if (externalDataFile) {
            this.message('compressed-cluster', `ERROR compressed cluster ${i} with data file, entry=0x${hex64(hi, lo)}`);
            this.res.corruptions++;
            break;
          }
          if (zeroBits !== 0 || allocBits !== 0) {
            this.message('compressed-cluster', `ERROR compressed cluster ${i} with non-zero subcluster allocation bitmap, entry=0x${hex64(hi, lo)}`);
            this.res.corruptions++;
            break;
          }
          // The span depends on the offset within its sector only: the low half has it even for a bigint offset.
          const csize = compressedSpan(typeof coffset === 'number' ? coffset : lo >>> 0, compressedAdditionalSectors(hi, clusterBits));
          this.incRefcounts(coffset, csize);
          if (fragInfo) {
            this.res.allocatedClusters++;
            this.res.compressedClusters++;
            // Compressed clusters are fragmented by nature (qemu's rule).
            this.res.fragmentedClusters++;
          }
          break;
        }
        case 'zero-alloc':
        case 'normal': {
          if ((zeroBits & allocBits) !== 0) {
            this.res.corruptions++;
            this.message('subcluster-bitmap', `ERROR offset=${offset.toString(16)}: Allocated cluster has corrupted subcluster allocation bitmap`);
          }
          if (offset % clusterSize !== 0) {
            this.res.corruptions++;
            const containsData = extendedL2 ? allocBits !== 0 : (lo & ZERO_LO) === 0;
            if (!containsData) {
              this.message(
                'misaligned',
                `${this.fixErrors ? 'Repairing' : 'ERROR'} offset=${offset.toString(16)}: Preallocated cluster is not properly aligned; L2 entry corrupted.`,
              );
              if (this.fixErrors && (await this.repairPreallocatedEntry(l2Offset, i, zeroBits, allocBits, active))) {
                this.res.corruptions--;
                this.res.corruptionsFixed++;
                continue;
              }
            } else {
              this.message('misaligned', `ERROR offset=${offset.toString(16)}: Data cluster is not properly aligned; L2 entry corrupted.`);
            }
          }
          if (fragInfo) {
            run.allocated++;
            if (run.next !== 0 && offset !== run.next) run.fragmented++;
            run.next = offset + clusterSize;
          }
          if (!externalDataFile) this.incRefcounts(offset, clusterSize);
          break;
        }
        case 'zero-plain':
          break;
        case 'unallocated':
          if (allocBits !== 0) {
            this.res.corruptions++;
            this.message('subcluster-bitmap', 'ERROR: Unallocated cluster has non-zero subcluster allocation map');
          }
          break;
      }
    }
    this.res.allocatedClusters += run.allocated;
    this.res.fragmentedClusters += run.fragmented;
  }

  /** Bitmaps are counted only when qemu would load them: v3 with the bitmaps autoclear bit set. */
  private bitmapsToCount(): BitmapsToCount | undefined {
    if (this.header.version < 3 || !hasBit(this.header.autoclearFeatures, AutoclearFeature.Bitmaps)) return undefined;
    const ext = bitmapsExtensionOf(this.header.extensions);
    if (ext === undefined || ext.nbBitmaps === 0) return undefined;
    return { directoryOffset: ext.bitmapDirectoryOffset, directorySize: ext.bitmapDirectorySize, nbBitmaps: ext.nbBitmaps };
  }

  /** qcow2_check_bitmaps_refcounts. */
  private async countBitmaps(): Promise<void> {
    const bitmaps = this.bitmapsToCount();
    if (bitmaps === undefined) return;
    this.incRefcounts(bitmaps.directoryOffset, bitmaps.directorySize);
    let entries: BitmapDirectoryEntry[];
    try {
      if (bitmaps.directorySize > 64 * 1024 * 1024) throw new Qcow2Error('BAD_BITMAP_DIRECTORY', 'Requested bitmap directory size is too big');
      const bytes = new Uint8Array(bitmaps.directorySize);
      await readZeroPadded(this.storage, bytes, bitmaps.directoryOffset);
      entries = decodeBitmapDirectory(bytes, bitmaps.nbBitmaps, {
        checkEntry: (entry) => checkBitmapEntryConstraints(entry, { clusterSize: this.clusterSize, virtualSize: this.header.size }),
      });
    } catch (error) {
      if (!(error instanceof Qcow2Error)) throw error;
      this.message('bitmap', `ERROR ${error.message}`);
      this.res.corruptions++;
      throw new CheckAbort('Invalid argument');
    }
    for (const entry of entries) {
      this.incRefcounts(entry.bitmapTableOffset, entry.bitmapTableSize * 8);
      const table = await this.readInFile(entry.bitmapTableOffset, entry.bitmapTableSize * 8);
      const view = new DataView(table.buffer);
      const offsets: number[] = [];
      for (let i = 0; i < table.length / 8; i++) {
        const hi = view.getUint32(i * 8);
        const lo = view.getUint32(i * 8 + 4);
        const offset = entryHostOffset(hi, lo);
        if (!bitmapTableEntryValid(hi, lo, this.clusterSize)) {
          // qemu's bitmap_table_load refuses the whole table: the check stops there.
          this.message('bitmap', `ERROR bitmap '${entry.name}': invalid bitmap table entry ${i}: ${hex64(hi, lo)}`);
          this.res.corruptions++;
          throw new CheckAbort('Invalid argument');
        }
        if (offset !== 0) offsets.push(offset);
      }
      for (const offset of offsets) this.incRefcounts(offset, this.clusterSize);
    }
  }

  /** check_refblocks: every refcount block is counted, and must be referenced exactly once. */
  async checkRefblocks(): Promise<void> {
    const { hi, lo } = this.stored.table;
    const cs = this.clusterSize;
    for (let i = 0; i < hi.length; i++) {
      const entryHi = hi[i]!;
      const entryLo = lo[i]!;
      if ((entryLo & 0x1ff) !== 0) {
        this.message('refcount-block', `ERROR refcount table entry ${i} has reserved bits set`);
        this.res.corruptions++;
        this.rebuild = true;
        continue;
      }
      const offset = entryHi * TWO_32 + entryLo;
      if ((entryLo & (cs - 1)) !== 0) {
        this.message('refcount-block', `ERROR refcount block ${i} is not cluster aligned; refcount table entry corrupted`);
        this.res.corruptions++;
        this.rebuild = true;
        continue;
      }
      const cluster = Math.floor(offset / cs);
      if (cluster >= this.refs.size) {
        this.res.corruptions++;
        this.message('refcount-block', `${this.fixErrors ? 'Repairing' : 'ERROR'} refcount block ${i} is outside image`);
        if (this.fixErrors) this.refblockOutsideImage(cluster);
        continue;
      }
      if (offset !== 0) {
        this.incRefcounts(offset, cs, this.refcountStructureRefs);
        const count = this.refs.get(cluster);
        if (count !== 1) {
          this.message('refcount-block', `ERROR refcount block ${i} refcount=${count}`);
          this.res.corruptions++;
          this.rebuild = true;
        }
      }
    }
  }

  /**
   * A refcount block past the end of the file, in a repair. qemu grows the file to hold it and counts it; the
   * refcounts it holds (zeros) then force a rebuild. A repair here never grows the file for it (the rebuild
   * drops the pointer) but keeps qemu's accounting, so the counts reported are the same.
   */
  protected refblockOutsideImage(cluster: number): void {
    this.rebuild = true;
    this.res.corruptions--;
    this.res.corruptionsFixed++;
    // Emulated only near the end of the file: qemu would grow the file (sparsely) as far as the pointer says.
    const near = cluster < this.fileClusters() * 2 + 65536;
    if (near && this.refs.grow(cluster + 1) && this.refs.increment(cluster)) this.refcountStructureRefs.push(cluster);
  }

  // ---------------------------------------------------------------------------------------------------------
  // Comparing (compare_refcounts) and COPIED flags (check_oflag_copied)

  async compareRefcounts(fixLeaks: boolean, fixErrors: boolean): Promise<void> {
    this.highestCluster = 0;
    const size = this.refs.size;
    const perBlock = this.stored.entriesPerBlock;
    const copy = this.layout.refcountBits === 64 ? undefined : new Uint32Array(size);
    const counts = this.refs.raw;
    // Block by block: one read, a synchronous decode, a tight comparison; a cluster whose counts differ (or that
    // cannot be compared this way) takes compareOne, with qemu's messages and the repairs.
    for (let start = 0; start < size; start += perBlock) {
      const end = Math.min(size, (Math.floor(start / perBlock) + 1) * perBlock);
      const values = copy?.subarray(start, end);
      if (values === undefined || !(await this.stored.getRange(start, values))) {
        // UNKNOWN_REFCOUNT where a refcount cannot be read: checkOflagCopied asks again there.
        values?.fill(UNKNOWN_REFCOUNT);
        for (let i = start; i < end; i++) await this.compareOne(i, undefined, fixLeaks, fixErrors, copy);
        continue;
      }
      const highest = { cluster: this.highestCluster };
      for (let i = firstRefcountMismatch(values, start, counts, start, end, highest); i < end; i = firstRefcountMismatch(values, start, counts, i + 1, end, highest)) {
        this.highestCluster = highest.cluster;
        await this.compareOne(i, values[i - start]!, fixLeaks, fixErrors, copy);
        highest.cluster = this.highestCluster;
      }
      this.highestCluster = highest.cluster;
    }
    this.storedCopy = copy;
    await this.refcountRepairsDone();
  }

  /** One cluster of compareRefcounts: `stored` as read, or undefined to read it here. */
  private async compareOne(i: number, known: number | undefined, fixLeaks: boolean, fixErrors: boolean, copy: Uint32Array | undefined): Promise<void> {
    const stored = known ?? (await this.stored.get(i));
    if (stored === undefined) {
      this.message('refcount-unreadable', `Can't get refcount for cluster ${i}: Input/output error`);
      this.res.checkErrors++;
      return;
    }
    if (copy !== undefined) copy[i] = stored;
    const references = this.refs.get(i);
    if (stored > 0 || references > 0) this.highestCluster = i;
    if (stored === references) return;
    let fixed: 'leaks' | 'corruptions' | undefined;
    if (stored === 0) this.rebuild = true;
    else if (stored > references && fixLeaks) fixed = 'leaks';
    else if (stored < references && fixErrors) fixed = 'corruptions';
    const word = fixed !== undefined ? 'Repairing' : stored < references ? 'ERROR' : 'Leaked';
    this.message(stored < references ? 'refcount-too-low' : 'leak', `${word} cluster ${i} refcount=${stored} reference=${references}`);
    if (fixed !== undefined && (await this.repairRefcount(i, references))) {
      if (fixed === 'leaks') this.res.leaksFixed++;
      else this.res.corruptionsFixed++;
      if (copy !== undefined) copy[i] = references;
      return;
    }
    if (stored < references) this.res.corruptions++;
    else this.res.leaks++;
  }

  async checkOflagCopied(): Promise<void> {
    const repair = this.fixErrors || (this.fixLeaks && this.res.checkErrors === 0 && this.res.corruptions === 0 && this.res.leaks === 0);
    const { clusterSize, clusterBits, l2Entries, l2EntryBytes, externalDataFile, extendedL2 } = this.layout;
    const l1Size = this.header.l1Size;
    const l1 = new Uint8Array(l1Size * 8);
    await readZeroPadded(this.storage, l1, this.header.l1TableOffset);
    const l1View = new DataView(l1.buffer);
    for (let i = 0; i < l1Size; i++) {
      const l1Hi = l1View.getUint32(i * 8);
      const l1Lo = l1View.getUint32(i * 8 + 4);
      const l2Offset = entryHostOffset(l1Hi, l1Lo);
      if (l2Offset === 0) continue;
      const l2Refcount = await this.stored.get(Math.floor(l2Offset / clusterSize));
      if (l2Refcount === undefined) continue;
      const l1Copied = (l1Hi & COPIED_HI) !== 0;
      if ((l2Refcount === 1) !== l1Copied) {
        this.res.corruptions++;
        this.message('copied-flag', `${repair ? 'Repairing' : 'ERROR'} OFLAG_COPIED L2 cluster: l1_index=${i} l1_entry=${hex64(l1Hi, l1Lo)} refcount=${l2Refcount}`);
        if (repair) {
          await this.repairL1Entry(i, withCopied(l1Hi, l2Refcount === 1), l1Lo);
          this.res.corruptions--;
          this.res.corruptionsFixed++;
        }
      }
      const table = this.l2Buffer();
      await readZeroPadded(this.storage, table, l2Offset);
      const view = new DataView(table.buffer);
      const copy = this.storedCopy;
      let dirty = 0;
      for (let j = 0; j < l2Entries; j++) {
        // Entries whose flag is right by the refcounts compareRefcounts read are skipped in one synchronous scan.
        if (copy !== undefined && !externalDataFile) {
          j = skipRightCopiedFlags(view, j, l2Entries, l2EntryBytes, clusterBits, copy, UNKNOWN_REFCOUNT);
          if (j >= l2Entries) break;
        }
        const at = j * l2EntryBytes;
        const hi = view.getUint32(at);
        const lo = view.getUint32(at + 4);
        if ((hi & COMPRESSED_HI) !== 0) continue;
        const offset = entryHostOffset(hi, lo);
        const copied = (hi & COPIED_HI) !== 0;
        const cluster = Math.floor(offset / clusterSize);
        const zeroFlag = (lo & ZERO_LO) !== 0 && !extendedL2;
        const isData = zeroFlag ? offset !== 0 : offset !== 0 || (externalDataFile && copied);
        if (!isData) continue;
        let refcount: number | undefined = 1;
        if (!externalDataFile) {
          const known = copy !== undefined && cluster < copy.length ? copy[cluster]! : UNKNOWN_REFCOUNT;
          if (known !== UNKNOWN_REFCOUNT) refcount = known;
          else {
            const peeked = this.stored.peek(cluster);
            refcount = peeked === NOT_CACHED ? await this.stored.get(cluster) : peeked;
          }
        }
        if (refcount === undefined) continue;
        if ((refcount === 1) !== copied) {
          this.res.corruptions++;
          this.message('copied-flag', `${repair ? 'Repairing' : 'ERROR'} OFLAG_COPIED data cluster: l2_entry=${hex64(hi, lo)} refcount=${refcount}`);
          if (repair) {
            view.setUint32(at, withCopied(hi, refcount === 1));
            dirty++;
          }
        }
      }
      if (dirty > 0) {
        await this.repairL2Table(l2Offset, table);
        this.res.corruptions -= dirty;
        this.res.corruptionsFixed += dirty;
      }
    }
  }

  // ---------------------------------------------------------------------------------------------------------
  // Repair hooks: a plain check never writes.

  /** How to mark the image corrupt on disk when metadata cannot be used (a repair only; a check reads). */
  protected markCorrupt(): (() => Promise<void>) | undefined {
    return undefined;
  }

  /** fix_l2_entry_by_zero: true when the entry was rewritten. */
  protected async repairPreallocatedEntry(_l2Offset: number, _index: number, _zeroBits: number, _allocBits: number, _active: boolean): Promise<boolean> {
    return false;
  }
  /** Sets a stored refcount: true when done. */
  protected async repairRefcount(_cluster: number, _value: number): Promise<boolean> {
    return false;
  }
  /** Called after compareRefcounts (a repair writes its refcount blocks here). */
  protected async refcountRepairsDone(): Promise<void> {}
  protected async repairL1Entry(_index: number, _hi: number, _lo: number): Promise<void> {
    throw new Qcow2Error('READ_ONLY', 'a check does not write', { file: this.name });
  }
  protected async repairL2Table(_offset: number, _table: Uint8Array): Promise<void> {
    throw new Qcow2Error('READ_ONLY', 'a check does not write', { file: this.name });
  }

  // ---------------------------------------------------------------------------------------------------------

  /** One read-only check: what qemu-img check does without -r. */
  async run(): Promise<void> {
    await this.load();
    await this.readSnapshotTable();
    this.refs = this.newReferenceCounts();
    await this.calculateRefcounts();
    await this.compareRefcounts(false, false);
    await this.checkOflagCopied();
  }

  report(failure: string | undefined): CheckReport {
    const cs = this.layout?.clusterSize ?? 1;
    return {
      filename: this.name,
      format: 'qcow2',
      checkErrors: this.res.checkErrors,
      corruptions: this.res.corruptions + this.snapshotCorruptions,
      leaks: this.res.leaks,
      corruptionsFixed: this.res.corruptionsFixed,
      leaksFixed: this.res.leaksFixed,
      imageEndOffset: this.layout === undefined ? 0 : (this.highestCluster + 1) * cs,
      totalClusters: this.header === undefined ? 0 : Math.ceil(this.header.size / cs),
      allocatedClusters: this.res.allocatedClusters,
      fragmentedClusters: this.res.fragmentedClusters,
      compressedClusters: this.res.compressedClusters,
      messages: this.messages,
      failure,
    };
  }
}

/** Reads a region sequentially through a window, zeros past the end of the file. */
class SequentialReader {
  private window = new Uint8Array(0);
  private windowStart = 0;

  constructor(
    private readonly storage: Storage,
    private readonly base: number,
  ) {}

  async read(position: number, length: number): Promise<Uint8Array> {
    if (position < this.windowStart || position + length > this.windowStart + this.window.length) {
      const size = Math.max(length, 64 * 1024);
      this.window = new Uint8Array(size);
      this.windowStart = position;
      await readZeroPadded(this.storage, this.window, this.base + position);
    }
    return this.window.subarray(position - this.windowStart, position - this.windowStart + length);
  }
}

/** Runs a checker and turns qemu-style early stops into report.failure. */
export async function runChecker(checker: ImageChecker, body: () => Promise<void>): Promise<CheckReport> {
  try {
    await body();
    return checker.report(undefined);
  } catch (error) {
    if (error instanceof CheckAbort) return checker.report(error.reason);
    throw error instanceof Qcow2Error ? error.withFile(checker.name) : error;
  }
}

/**
 * qemu-img check of one qcow2 image (not its backing files): rebuilds the expected refcount of every host
 * cluster from the metadata and compares it with the stored refcounts. Reads only; the metadata is read from
 * the file afresh, so the image's cached state does not matter.
 */
export async function checkImage(image: Qcow2Image, options: CheckOptions = {}): Promise<CheckReport> {
  return checkStorage(image.storage, options);
}

/**
 * The same check on a qcow2 file given as storage, for images that Qcow2Image.open refuses but qemu-img check
 * still examines (a snapshot table or a snapshot L1 table that does not fit in the file, for instance): the
 * check reads everything itself, tolerating what qemu tolerates.
 */
export async function checkStorage(storage: Storage, options: CheckOptions = {}): Promise<CheckReport> {
  const checker = new ImageChecker(storage, storage.name, options);
  return runChecker(checker, () => checker.run());
}
