import { Qcow2Error } from '../errors.js';
import { COPIED_HI, entryHostOffset, l2EntryClusters, setTableEntry } from '../format/table-entries.js';
import { viewOf } from '../format/struct.js';
import type { BitmapTracker } from './bitmap-tracker.js';
import type { Qcow2Image } from './qcow2-image.js';
import type { Refcounts } from './refcounts.js';
import { SegmentKind } from './segments.js';

/** Reads what lies below this image (the backing chain, or zeros) for guest bytes it does not hold. */
export type BelowReader = (dest: Uint8Array, guestOffset: number) => Promise<void>;

/**
 * What every part of the write path shares (image-writer.ts and the files of its concerns: guest-write,
 * subcluster-write, compressed-write, zero-write, resize-image, preallocation): the image, its refcounts, the
 * bitmaps kept true, and the ORDER in which metadata reaches the file.
 *
 * The order, qemu's: data, then refcount increases, then L2 entries, then L1 entries; pointers are cleared
 * before refcounts drop. Refcount increases live in dirty refcount blocks until a write-back, which writes them
 * before the L2 tables that point at the clusters they count; a released cluster waits in the release queue
 * until the tables that no longer point at it are written. A process killed at any point leaves at worst leaked
 * clusters, never a pointer to a cluster whose refcount does not count it (docs/crash-safety.md).
 */
export class WriteContext {
  /** Refcount drops that wait until the entries that stopped pointing at the clusters are on disk. */
  private readonly pendingFrees: Array<{ cluster: number; count: number }> = [];
  /** The image's persistent bitmaps, kept true across writes (bitmap-tracker.ts), when it has any. */
  bitmaps: BitmapTracker | undefined;
  /** Told when released clusters may be reused (compressed-write.ts forgets its partly used cluster then). */
  onClustersReleased: (() => void) | undefined;

  constructor(
    readonly image: Qcow2Image,
    readonly refcounts: Refcounts,
  ) {}

  get clusterSize(): number {
    return this.image.layout.clusterSize;
  }

  /** Queues dropping one reference from `count` clusters from `cluster`, at the next write-back. */
  release(cluster: number, count: number): void {
    this.pendingFrees.push({ cluster, count });
  }

  /** Queues the release of whatever an L2 entry pointed at, to happen after the new entry is on disk. */
  releaseEntry(hi: number, lo: number): void {
    const clusters = l2EntryClusters(hi, lo, this.image.layout.clusterBits, this.image.layout.externalDataFile);
    if (clusters !== undefined) this.release(clusters.first, clusters.count);
  }

  /** The image file reaches at least `end` (new clusters written past its old end). */
  fileReaches(end: number): void {
    this.image.fileReaches(end);
  }

  /** Writes metadata back in order: refcount blocks, L2 tables, then the refcount drops of released clusters. */
  async writeBackMetadata(): Promise<void> {
    await this.refcounts.flush();
    for (const [offset, bytes] of this.image.l2Cache.dirty()) {
      await this.image.storage.write(bytes, offset);
      this.image.l2Cache.markClean(offset);
    }
    // Released clusters may be reused from here on.
    if (this.pendingFrees.length > 0) this.onClustersReleased?.();
    while (this.pendingFrees.length > 0) {
      const { cluster, count } = this.pendingFrees.shift()!;
      await this.refcounts.free(cluster * this.clusterSize, count);
    }
    await this.refcounts.flush();
  }

  /** After a batch of changes: written back when the L2 cache has no room left for more dirty tables. */
  async writeBackIfFull(): Promise<void> {
    this.image.invalidateCompressedCache();
    if (this.image.l2Cache.full) await this.writeBackMetadata();
  }

  /** Metadata written back and, when `durable`, everything on stable storage (fsync). */
  async flush(durable: boolean): Promise<void> {
    await this.writeBackMetadata();
    if (!durable) return;
    await this.image.dataStorage.flush();
    if (this.image.dataStorage !== this.image.storage) await this.image.storage.flush();
  }

  /**
   * The L2 table for L1 index `l1Index`, ready for writing: allocated when missing, copied when shared with a
   * snapshot (COPIED clear). The new table is on disk, counted, before the L1 entry points at it; the old one
   * is released after.
   */
  async l2ForWrite(l1Index: number): Promise<number> {
    const l1 = this.image.activeL1;
    if (l1Index >= l1.entries) throw new Qcow2Error('OUT_OF_RANGE', `L1 index ${l1Index} beyond the L1 table`, { file: this.image.name });
    const hi = l1.view.getUint32(l1Index * 8);
    const lo = l1.view.getUint32(l1Index * 8 + 4);
    const oldOffset = entryHostOffset(hi, lo);
    if (oldOffset !== 0 && (hi & COPIED_HI) !== 0) return oldOffset;
    const newOffset = await this.refcounts.allocate(1);
    const table = oldOffset === 0 ? new Uint8Array(this.clusterSize) : (await this.image.l2Table(oldOffset)).slice();
    await this.refcounts.flush();
    await this.image.storage.write(table, newOffset);
    await this.writeL1Entry(l1Index, newOffset);
    this.image.l2Cache.set(newOffset, table);
    if (oldOffset !== 0) this.release(oldOffset / this.clusterSize, 1);
    this.fileReaches(newOffset + this.clusterSize);
    return newOffset;
  }

  /**
   * The L2 table of L1 index `l1Index` ready for writing (l2ForWrite), marked dirty at once (a dirty table is
   * never evicted, so later awaits cannot lose it), as a view for changing its entries.
   */
  async dirtyL2(l1Index: number): Promise<{ offset: number; view: DataView }> {
    const offset = await this.l2ForWrite(l1Index);
    const table = await this.image.l2Table(offset);
    this.image.l2Cache.markDirty(offset);
    return { offset, view: viewOf(table) };
  }

  /** Points active L1 entry `l1Index` at `l2Offset` (COPIED), in memory and in the file. */
  async writeL1Entry(l1Index: number, l2Offset: number): Promise<void> {
    const l1 = this.image.activeL1;
    setTableEntry(l1.view, l1Index * 8, l2Offset, true);
    await this.writeL1Entries(l1Index, 1);
  }

  /** Writes `count` entries of the active L1 from `l1Index`, as they are in memory. */
  async writeL1Entries(l1Index: number, count: number): Promise<void> {
    const l1 = this.image.activeL1;
    await this.image.storage.write(l1.bytes.subarray(l1Index * 8, (l1Index + count) * 8), this.image.header.l1TableOffset + l1Index * 8);
  }

  /**
   * Reads what the guest sees now in `dest.length` bytes at `guestOffset` of this image (its own data, zeros, or
   * what lies below): the old contents a copy-on-write carries over. Past the end of the disk, zeros.
   */
  async readGuest(guestOffset: number, dest: Uint8Array, below: BelowReader): Promise<void> {
    const length = Math.min(dest.length, this.image.virtualSize - guestOffset);
    if (length < dest.length) dest.fill(0, Math.max(0, length));
    if (length <= 0) return;
    for (const seg of await this.image.segments(guestOffset, length)) {
      const part = dest.subarray(seg.guestOffset - guestOffset, seg.guestOffset - guestOffset + seg.length);
      if (seg.kind === SegmentKind.Unallocated) await below(part, seg.guestOffset);
      else await this.image.readSegment(seg, part);
    }
  }
}
