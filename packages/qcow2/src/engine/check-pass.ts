import { Qcow2Error } from '../errors.js';
import { HEADER_PROBE_BYTES, decodeHeader, probeClusterBits, type Qcow2Header } from '../format/header.js';
import { readZeroPadded, type Storage } from '../io/storage.js';
import {
  CheckAbort,
  DEFAULT_MAX_CHECK_CLUSTERS,
  zeroCounters,
  type CheckCounters,
  type CheckMessage,
  type CheckOptions,
  type CheckProblemKind,
  type CheckReport,
} from './check-report.js';
import { layoutOf, validateForIo, validateHeader, type ImageLayout } from './image-layout.js';
import { ReferenceCounts } from './reference-counts.js';
import { StoredRefcounts } from './stored-refcounts.js';

/** In the stored-refcount copy compareRefcounts keeps: not known there, ask the refcount block. */
export const UNKNOWN_REFCOUNT = 0xffffffff;

/** A snapshot table entry as the check needs it. */
export interface CheckedSnapshot {
  l1TableOffset: number;
  l1Size: number;
  id: string;
  name: string;
  extraDataSize: number;
}

/**
 * What one check pass over an image knows and has found: the header and layout as read afresh from the file,
 * the references counted (`refs`), the refcounts stored (`stored`), the snapshot table, the counters and
 * messages, and the repair hooks. The passes themselves, in qemu's order, are functions of their own files:
 * check-snapshot-table.ts, check-references.ts (calculate_refcounts), check-compare.ts (compare_refcounts,
 * check_oflag_copied); check.ts runs them. The `fix*` flags and the `repair*` hooks are what a repair
 * (repair.ts) sets and overrides; here every hook declines, so nothing is written.
 */
export class CheckPass {
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
  storedCopy: Uint32Array | undefined;
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

  /** The buffer the passes read L2 tables into, one table at a time (no garbage of a cluster per table). */
  l2Buffer(): Uint8Array {
    if (this.tableBuffer?.length !== this.clusterSize) this.tableBuffer = new Uint8Array(this.clusterSize);
    return this.tableBuffer;
  }

  // ---------------------------------------------------------------------------------------------------------
  // Repair hooks: a plain check never writes.

  /** How to mark the image corrupt on disk when metadata cannot be used (a repair only; a check reads). */
  markCorrupt(): (() => Promise<void>) | undefined {
    return undefined;
  }

  /** fix_l2_entry_by_zero: true when the entry was rewritten. */
  async repairPreallocatedEntry(_l2Offset: number, _index: number, _zeroBits: number, _allocBits: number, _active: boolean): Promise<boolean> {
    return false;
  }
  /** Sets a stored refcount: true when done. */
  async repairRefcount(_cluster: number, _value: number): Promise<boolean> {
    return false;
  }
  /** Called after compareRefcounts (a repair writes its refcount blocks here). */
  async refcountRepairsDone(): Promise<void> {}
  async repairL1Entry(_index: number, _hi: number, _lo: number): Promise<void> {
    throw new Qcow2Error('READ_ONLY', 'a check does not write', { file: this.name });
  }
  async repairL2Table(_offset: number, _table: Uint8Array): Promise<void> {
    throw new Qcow2Error('READ_ONLY', 'a check does not write', { file: this.name });
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
