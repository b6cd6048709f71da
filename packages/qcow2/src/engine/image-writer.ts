import { Qcow2Error } from '../errors.js';
import {
  ALLOC_BITMAP_AT,
  ALL_SUBCLUSTERS,
  COMPRESSED_HI,
  COPIED_HI,
  HOST_OFFSET_LO_MASK,
  ZERO_BITMAP_AT,
  setSubclusterBitmaps,
  subclusterRange,
  ZERO_LO,
  encodeCompressedDescriptor,
  entryHostOffset,
  l2EntryClusters,
  setTableEntry,
} from '../format/table-entries.js';
import { viewOf } from '../format/struct.js';
import type { Qcow2Image } from './qcow2-image.js';
import { BitmapTracker } from './bitmap-tracker.js';
import { voidPersistentBitmaps, writeHeaderFields } from './header-rewrite.js';
import { Refcounts } from './refcounts.js';
import { SegmentKind } from './segments.js';
import { writeSubclusters, type SubclusterContext } from './subcluster-write.js';
import type { BelowReader } from './write-context.js';
import { isZero } from '../io/zero-detect.js';

export type { BelowReader } from './write-context.js';


/**
 * The write side of one image: guest writes with cluster allocation and copy-on-write, compressed cluster
 * writes, and write-back of metadata in qemu's order — data, then refcount increases, then L2 entries, then L1
 * entries; pointers are cleared before refcounts drop. A process killed at any point leaves at worst leaked
 * clusters, never a pointer to a cluster whose refcount does not count it.
 */
export class Qcow2Writer {
  private readonly pendingFrees: Array<{ cluster: number; count: number }> = [];
  private firstWriteDone = false;
  /** Host bytes of the partly filled cluster that compressed clusters are packed into (qemu's free_byte_offset). */
  private compressedCursor = 0;
  /** Keeps the image's persistent bitmaps true across guest writes (see bitmap-tracker.ts), when it has any. */
  private bitmaps: BitmapTracker | undefined;

  private constructor(
    readonly image: Qcow2Image,
    readonly refcounts: Refcounts,
  ) {}

  static async attach(image: Qcow2Image): Promise<Qcow2Writer> {
    if (image.corrupt) {
      throw new Qcow2Error('READ_ONLY', 'image is marked corrupt; repair it with check -r all before writing', { file: image.name });
    }
    if (image.dirty) {
      throw new Qcow2Error(
        'READ_ONLY',
        'image has the dirty bit set (lazy refcounts after a crash); its refcounts must be repaired (check -r all) before writing',
        { file: image.name },
      );
    }
    const header = image.header;
    const refcounts = await Refcounts.load(image.storage, image.layout, header.refcountTableOffset, header.refcountTableClusters, (offset, clusters) =>
      writeHeaderFields(image.storage, header, { refcountTableOffset: offset, refcountTableClusters: clusters }),
    );
    return new Qcow2Writer(image, refcounts);
  }

  private get clusterSize(): number {
    return this.image.layout.clusterSize;
  }

  /**
   * Before the first write changes the disk: consistent persistent bitmaps are tracked (flagged in use now,
   * stored on close). Bitmaps this engine cannot maintain (a directory it cannot read) get autoclear bit 0
   * cleared instead, so qemu treats them as inconsistent.
   */
  private async beforeFirstWrite(): Promise<void> {
    if (this.firstWriteDone) return;
    this.firstWriteDone = true;
    this.bitmaps = await BitmapTracker.attach(this.image, this.refcounts).catch(() => undefined);
    if (this.bitmaps !== undefined) {
      await this.bitmaps.beforeFirstChange();
      return;
    }
    await voidPersistentBitmaps(this.image);
  }

  /** Writes guest bytes at `offset`. Partial clusters that need a new cluster are completed from `below`. */
  async write(offset: number, data: Uint8Array, below: BelowReader): Promise<void> {
    if (offset < 0 || offset + data.length > this.image.virtualSize) {
      throw new Qcow2Error('OUT_OF_RANGE', `write [${offset}, ${offset + data.length}) outside the disk`, { file: this.image.name });
    }
    await this.beforeFirstWrite();
    this.bitmaps?.changed(offset, data.length);
    const { l2Coverage } = this.image.layout;
    const end = offset + data.length;
    let pos = offset;
    while (pos < end) {
      const l1Index = Math.floor(pos / l2Coverage);
      const tableEnd = Math.min(end, (l1Index + 1) * l2Coverage);
      await this.writeInTable(l1Index, pos, data.subarray(pos - offset, tableEnd - offset), below);
      pos = tableEnd;
    }
    this.image.invalidateCompressedCache();
    if (this.image.l2Cache.full) await this.writeBackMetadata();
  }

  /** Writes within the range of one L2 table: runs of in-place clusters and runs needing allocation. */
  private async writeInTable(l1Index: number, offset: number, data: Uint8Array, below: BelowReader): Promise<void> {
    const { clusterSize, l2EntryBytes, extendedL2, externalDataFile } = this.image.layout;
    const l2Offset = await this.l2ForWrite(l1Index);
    const table = await this.image.l2Table(l2Offset);
    const view = viewOf(table);
    const end = offset + data.length;
    const firstCluster = Math.floor(offset / clusterSize);
    const lastCluster = Math.floor((end - 1) / clusterSize);
    const tableFirstCluster = l1Index * this.image.layout.l2Entries;

    let runStart = firstCluster; // first cluster of the current run
    let runInPlace: boolean | undefined;
    let runHost = 0; // in-place runs: host offset of runStart's cluster
    const flushRun = async (runEnd: number): Promise<void> => {
      if (runInPlace === undefined) return;
      const from = Math.max(offset, runStart * clusterSize);
      const to = Math.min(end, runEnd * clusterSize);
      if (runInPlace) {
        await this.image.dataStorage.write(data.subarray(from - offset, to - offset), runHost + (from - runStart * clusterSize));
      } else {
        await this.allocateAndWrite(l2Offset, view, tableFirstCluster, runStart, runEnd, from, data.subarray(from - offset, to - offset), below);
      }
    };
    for (let cluster = firstCluster; cluster <= lastCluster; cluster++) {
      const index = cluster - tableFirstCluster;
      const clusterStart = cluster * clusterSize;
      const partial = clusterStart < offset || clusterStart + clusterSize > end;
      if (extendedL2 && partial && clusterStart + clusterSize <= this.image.virtualSize) {
        // A partial write touches only some subclusters: handled per cluster, the rest keep their state.
        await flushRun(cluster);
        runInPlace = undefined;
        const from = Math.max(offset, clusterStart);
        const to = Math.min(end, clusterStart + clusterSize);
        await writeSubclusters(this.subclusterContext(below), l2Offset, view, index, clusterStart, from, data.subarray(from - offset, to - offset));
        runStart = cluster + 1;
        continue;
      }
      const hi = view.getUint32(index * l2EntryBytes);
      const lo = view.getUint32(index * l2EntryBytes + 4);
      const host = entryHostOffset(hi, lo);
      const copied = (hi & COPIED_HI) !== 0;
      const compressed = (hi & COMPRESSED_HI) !== 0;
      const allocated = !compressed && (host !== 0 || (externalDataFile && copied));
      // An extended L2 cluster written whole can stay in place whatever its bitmap says (it becomes fully allocated).
      const fullyAllocated = extendedL2 ? !partial : (lo & ZERO_LO) === 0;
      const inPlace = allocated && copied && fullyAllocated;
      if (inPlace && extendedL2) {
        setSubclusterBitmaps(view, index * l2EntryBytes, 0, ALL_SUBCLUSTERS);
        this.image.l2Cache.markDirty(l2Offset);
      }
      const continues =
        runInPlace === inPlace && (!inPlace || runHost + (cluster - runStart) * clusterSize === host);
      if (!continues) {
        await flushRun(cluster);
        runStart = cluster;
        runInPlace = inPlace;
        runHost = host;
      }
    }
    await flushRun(lastCluster + 1);
    this.updateFileSize();
  }

  private subclusterContext(below: BelowReader): SubclusterContext {
    return {
      image: this.image,
      below,
      allocateCluster: async () => (this.image.layout.externalDataFile ? undefined : this.refcounts.allocate(1)),
      freeEntry: (hi, lo) => this.queueFreeOfEntry(hi, lo, this.image.layout.clusterBits, this.image.layout.externalDataFile),
      readOwnCluster: (guestOffset, dest) => this.readOwnCluster(guestOffset, dest, below),
    };
  }

  /**
   * Clusters [runStart, runEnd) get new host clusters holding `data` (at guest `from`), completed from the old
   * contents where the write covers a cluster partly. Old clusters are freed after the new entries are written.
   */
  private async allocateAndWrite(
    l2Offset: number,
    view: DataView,
    tableFirstCluster: number,
    runStart: number,
    runEnd: number,
    from: number,
    data: Uint8Array,
    below: BelowReader,
  ): Promise<void> {
    const { clusterSize, l2EntryBytes, extendedL2, externalDataFile, clusterBits } = this.image.layout;
    // Dirty before the first await that could load other tables: dirty tables are never evicted.
    this.image.l2Cache.markDirty(l2Offset);
    const count = runEnd - runStart;
    const guestStart = runStart * clusterSize;
    // External data files map guest offset to the same host offset and keep no refcounts for data.
    const host = externalDataFile ? guestStart : await this.refcounts.allocate(count);
    const aligned = from === guestStart && data.length === count * clusterSize;
    if (aligned) {
      await this.image.dataStorage.write(data, host);
    } else {
      const buffer = new Uint8Array(count * clusterSize);
      if (from > guestStart) await this.readOwnCluster(guestStart, buffer.subarray(0, clusterSize), below);
      const dataEnd = from + data.length;
      if (dataEnd < runEnd * clusterSize && (count > 1 || from === guestStart)) {
        await this.readOwnCluster((runEnd - 1) * clusterSize, buffer.subarray((count - 1) * clusterSize), below);
      }
      buffer.set(data, from - guestStart);
      await this.image.dataStorage.write(buffer, host);
    }
    for (let cluster = runStart; cluster < runEnd; cluster++) {
      const index = cluster - tableFirstCluster;
      const at = index * l2EntryBytes;
      const oldHi = view.getUint32(at);
      const oldLo = view.getUint32(at + 4);
      this.queueFreeOfEntry(oldHi, oldLo, clusterBits, externalDataFile);
      const newHost = host + (cluster - runStart) * clusterSize;
      setTableEntry(view, at, newHost, true);
      if (extendedL2) {
        setSubclusterBitmaps(view, at, 0, ALL_SUBCLUSTERS);
      }
    }
  }

  /** Queues the release of whatever an L2 entry pointed at, to happen after the new entry is on disk. */
  private queueFreeOfEntry(hi: number, lo: number, clusterBits: number, externalDataFile: boolean): void {
    const clusters = l2EntryClusters(hi, lo, clusterBits, externalDataFile);
    if (clusters !== undefined) this.pendingFrees.push({ cluster: clusters.first, count: clusters.count });
  }

  /** Reads the current guest contents of one cluster of this image (own data, zeros, or from below). */
  private async readOwnCluster(guestOffset: number, dest: Uint8Array, below: BelowReader): Promise<void> {
    const length = Math.min(dest.length, this.image.virtualSize - guestOffset);
    if (length < dest.length) dest.fill(0, Math.max(0, length));
    if (length <= 0) return;
    for (const seg of await this.image.segments(guestOffset, length)) {
      const part = dest.subarray(seg.guestOffset - guestOffset, seg.guestOffset - guestOffset + seg.length);
      if (seg.kind === SegmentKind.Unallocated) await below(part, seg.guestOffset);
      else await this.image.readSegment(seg, part);
    }
  }

  /**
   * The L2 table for L1 index `l1Index`, ready for writing: allocated when missing, copied when shared with a
   * snapshot (COPIED clear). The new table is on disk, counted, before the L1 entry points at it.
   */
  private async l2ForWrite(l1Index: number): Promise<number> {
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
    if (oldOffset !== 0) this.pendingFrees.push({ cluster: oldOffset / this.clusterSize, count: 1 });
    this.updateFileSize(newOffset + this.clusterSize);
    return newOffset;
  }

  private async writeL1Entry(l1Index: number, l2Offset: number): Promise<void> {
    const l1 = this.image.activeL1;
    setTableEntry(l1.view, l1Index * 8, l2Offset, true);
    await this.image.storage.write(l1.bytes.subarray(l1Index * 8, l1Index * 8 + 8), this.image.header.l1TableOffset + l1Index * 8);
  }

  /**
   * Stores one compressed cluster for guest cluster at `guestOffset` (cluster aligned). `stored` is the
   * compressed stream; it is packed into a partly used host cluster when it fits, as qemu does.
   */
  async writeCompressed(guestOffset: number, stored: Uint8Array): Promise<void> {
    const { clusterSize, clusterBits, l2EntryBytes, l2Coverage, l2Entries, extendedL2 } = this.image.layout;
    if (this.image.layout.externalDataFile) throw new Qcow2Error('BAD_ARGUMENT', 'compressed clusters cannot be written to an image with an external data file');
    if (stored.length > clusterSize) throw new Qcow2Error('BAD_ARGUMENT', 'compressed cluster larger than a cluster');
    await this.beforeFirstWrite();
    this.bitmaps?.changed(guestOffset, clusterSize);
    // The L2 table first (as qemu allocates it), so the file ends right after the last compressed sector.
    const l1Index = Math.floor(guestOffset / l2Coverage);
    const l2Offset = await this.l2ForWrite(l1Index);
    const table = await this.image.l2Table(l2Offset);
    const view = viewOf(table);
    const at = ((guestOffset / clusterSize) % l2Entries) * l2EntryBytes;
    // Like qemu, a compressed cluster never overwrites one that has host space (data or compressed).
    if ((view.getUint32(at) & COMPRESSED_HI) !== 0 || entryHostOffset(view.getUint32(at), view.getUint32(at + 4)) !== 0) {
      throw new Qcow2Error('IO_ERROR', 'Input/output error: compressed writes need an unallocated cluster', { file: this.image.name });
    }
    this.image.l2Cache.markDirty(l2Offset);
    const hostOffset = await this.allocateBytes(stored.length);
    await this.image.storage.write(stored, hostOffset);
    this.queueFreeOfEntry(view.getUint32(at), view.getUint32(at + 4), clusterBits, false);
    const sectors = Math.floor((hostOffset + stored.length - 1) / 512) - Math.floor(hostOffset / 512);
    const { hi, lo } = encodeCompressedDescriptor(hostOffset, sectors, clusterBits);
    view.setUint32(at, hi);
    view.setUint32(at + 4, lo);
    if (extendedL2) {
      setSubclusterBitmaps(view, at, 0, 0);
    }
    this.image.l2Cache.markDirty(l2Offset);
    this.image.invalidateCompressedCache();
    this.updateFileSize(hostOffset + stored.length);
    if (this.image.l2Cache.full) await this.writeBackMetadata();
  }

  /**
   * Byte allocation for compressed streams: continue in the current partly used host cluster when the stream
   * fits, or spill into the next cluster when that one can be had contiguously; every host cluster the stream
   * touches gains one reference.
   */
  private async allocateBytes(size: number): Promise<number> {
    const { clusterSize } = this;
    let offset = this.compressedCursor;
    // A cluster whose refcount is already at the maximum (1-bit refcounts) takes no more streams.
    if (offset !== 0 && (await this.refcounts.get(Math.floor(offset / clusterSize))) >= this.refcounts.max) offset = 0;
    if (offset !== 0 && offset % clusterSize !== 0) {
      const used = offset % clusterSize;
      const clusterStart = offset - used;
      if (used + size <= clusterSize) {
        await this.refcounts.adjust(clusterStart / clusterSize, 1, 1);
      } else {
        const next = await this.refcounts.allocate(1);
        if (next !== clusterStart + clusterSize) {
          // Not contiguous: start the stream in the fresh cluster instead.
          offset = next;
        } else {
          await this.refcounts.adjust(clusterStart / clusterSize, 1, 1);
        }
      }
    } else {
      offset = await this.refcounts.allocate(1);
    }
    this.compressedCursor = offset + size;
    return offset;
  }

  /**
   * Makes [offset, offset+length) read as zeros. Whole clusters get the zero flag (v3) or zero subcluster bits
   * (extended L2) and keep their host cluster unless `unmap`; on v2, which has no zero flag, they are
   * deallocated when nothing shows through from below, else written as zero bytes. Partial clusters are written
   * as zero bytes.
   */
  async writeZeroes(offset: number, length: number, below: BelowReader, options: { unmap: boolean; hasBacking: boolean }): Promise<void> {
    await this.zeroRange(offset, length, below, { ...options, discard: false });
  }

  /**
   * Discards [offset, offset+length): whole clusters only, as qemu does; v3 keeps reading zeros (zero flag),
   * v2 deallocates (the guest may then see the backing file, which discard allows).
   */
  async discard(offset: number, length: number, below: BelowReader, options: { hasBacking: boolean }): Promise<void> {
    // v2 cannot say "zero" and deallocating would expose the backing file: qemu leaves the data (discard is a hint).
    if (this.image.header.version === 2 && options.hasBacking) return;
    await this.zeroRange(offset, length, below, { unmap: true, hasBacking: options.hasBacking, discard: true });
  }

  private async zeroRange(
    offset: number,
    length: number,
    below: BelowReader,
    options: { unmap: boolean; hasBacking: boolean; discard: boolean },
  ): Promise<void> {
    if (offset < 0 || offset + length > this.image.virtualSize) {
      throw new Qcow2Error('OUT_OF_RANGE', `zero write [${offset}, ${offset + length}) outside the disk`, { file: this.image.name });
    }
    if (length === 0) return;
    await this.beforeFirstWrite();
    this.bitmaps?.changed(offset, length);
    const { clusterSize, subclusterSize, extendedL2, l2Coverage } = this.image.layout;
    // Zero writes work in subclusters with extended L2 (qemu sets zero bits); discards in whole clusters.
    const unit = extendedL2 && !options.discard ? subclusterSize : clusterSize;
    const end = offset + length;
    // The last unit counts as whole when the disk ends inside it.
    let firstFull = Math.ceil(offset / unit) * unit;
    let lastFull = end === this.image.virtualSize ? end : Math.floor(end / unit) * unit;
    const v2 = this.image.header.version === 2;
    if (!options.discard && !(v2 && options.hasBacking)) {
      // Like qemu: a partly zeroed unit whose other bytes already read as zeros is zeroed whole (flag, no data).
      const head = firstFull - unit;
      if (offset < firstFull && (await this.readsZeroOutside(head, unit, offset, end, below))) firstFull = head;
      const tail = lastFull;
      if (end > lastFull && end < this.image.virtualSize && tail >= firstFull && (await this.readsZeroOutside(tail, unit, offset, end, below))) {
        lastFull = Math.min(tail + unit, this.image.virtualSize);
      }
    }
    if (firstFull >= lastFull) {
      if (!options.discard) await this.write(offset, new Uint8Array(length), below);
      return;
    }
    if (!options.discard) {
      if (offset < firstFull) await this.write(offset, new Uint8Array(firstFull - offset), below);
      if (lastFull < end) await this.write(lastFull, new Uint8Array(end - lastFull), below);
      if (v2 && options.hasBacking) {
        // No zero flag in v2: zeros must be stored, or the backing file would show through.
        for (let pos = firstFull; pos < lastFull; pos += 4 * 1024 * 1024) {
          await this.write(pos, new Uint8Array(Math.min(4 * 1024 * 1024, lastFull - pos)), below);
        }
        return;
      }
    }
    // Whole clusters get zero flags (or bitmaps); the subclusters of a partly covered cluster get zero bits.
    const wholeFrom = Math.ceil(firstFull / clusterSize) * clusterSize;
    const wholeTo = lastFull === this.image.virtualSize ? lastFull : Math.floor(lastFull / clusterSize) * clusterSize;
    if (wholeFrom >= wholeTo) {
      // No whole cluster: at most the tail of one cluster and the head of the next.
      await this.zeroSubclusters(firstFull, Math.min(lastFull, wholeFrom), below);
      if (lastFull > wholeFrom) await this.zeroSubclusters(wholeFrom, lastFull, below);
    } else {
      if (firstFull < wholeFrom) await this.zeroSubclusters(firstFull, wholeFrom, below);
      for (let pos = wholeFrom; pos < wholeTo; ) {
        const l1Index = Math.floor(pos / l2Coverage);
        const tableEnd = Math.min(wholeTo, (l1Index + 1) * l2Coverage);
        await this.zeroClustersInTable(l1Index, pos, tableEnd, options);
        pos = tableEnd;
      }
      if (wholeTo < lastFull) await this.zeroSubclusters(wholeTo, lastFull, below);
    }
    this.image.invalidateCompressedCache();
    if (this.image.l2Cache.full) await this.writeBackMetadata();
  }

  /**
   * Extended L2: makes subclusters [from, to) of one cluster read as zeros by their bitmap bits, as qemu does; a
   * compressed cluster has no bitmap, so its subclusters are written as zero bytes instead.
   */
  private async zeroSubclusters(from: number, to: number, below: BelowReader): Promise<void> {
    const { clusterSize, subclusterSize, l2Coverage, l2Entries, l2EntryBytes } = this.image.layout;
    const cluster = Math.floor(from / clusterSize) * clusterSize;
    const l2Offset = await this.l2ForWrite(Math.floor(from / l2Coverage));
    const view = viewOf(await this.image.l2Table(l2Offset));
    const at = ((cluster / clusterSize) % l2Entries) * l2EntryBytes;
    if ((view.getUint32(at) & COMPRESSED_HI) !== 0) {
      await this.write(from, new Uint8Array(to - from), below);
      return;
    }
    this.image.l2Cache.markDirty(l2Offset);
    const first = (from - cluster) / subclusterSize;
    const last = Math.ceil((to - cluster) / subclusterSize) - 1;
    const mask = subclusterRange(first, last);
    setSubclusterBitmaps(view, at, view.getUint32(at + ZERO_BITMAP_AT) | mask, view.getUint32(at + ALLOC_BITMAP_AT) & ~mask);
  }

  /** Whether the `unit` bytes at `at` read as zeros everywhere outside [from, to). */
  private async readsZeroOutside(at: number, unit: number, from: number, to: number, below: BelowReader): Promise<boolean> {
    const size = Math.min(unit, this.image.virtualSize - at);
    const bytes = new Uint8Array(size);
    await this.readOwnCluster(at, bytes, below);
    const start = Math.max(0, from - at);
    const end = Math.min(size, to - at);
    return isZero(bytes.subarray(0, start)) && isZero(bytes.subarray(end));
  }

  private async zeroClustersInTable(
    l1Index: number,
    from: number,
    to: number,
    options: { unmap: boolean; hasBacking: boolean; discard: boolean },
  ): Promise<void> {
    const { clusterSize, clusterBits, l2EntryBytes, l2Entries, extendedL2, externalDataFile } = this.image.layout;
    const v2 = this.image.header.version === 2;
    const l1 = this.image.activeL1;
    if (l1Index < l1.entries && v2 && entryHostOffset(l1.view.getUint32(l1Index * 8), l1.view.getUint32(l1Index * 8 + 4)) === 0) {
      return; // v2 deallocation of a range with no L2 table: nothing to do.
    }
    const l2Offset = await this.l2ForWrite(l1Index);
    const table = await this.image.l2Table(l2Offset);
    this.image.l2Cache.markDirty(l2Offset);
    const view = viewOf(table);
    for (let cluster = from / clusterSize; cluster * clusterSize < to; cluster++) {
      const at = (cluster % l2Entries) * l2EntryBytes;
      const hi = view.getUint32(at);
      const lo = view.getUint32(at + 4);
      const host = entryHostOffset(hi, lo);
      const copied = (hi & COPIED_HI) !== 0;
      const compressed = (hi & COMPRESSED_HI) !== 0;
      const allocated = !compressed && (host !== 0 || (externalDataFile && copied));
      const keep = !options.discard && !options.unmap && !v2 && allocated;
      const zero = !v2 && (!options.discard || options.hasBacking || allocated || compressed);
      if (!keep) this.queueFreeOfEntry(hi, lo, clusterBits, externalDataFile);
      // v3 standard entries carry the zero flag; extended L2 says it in the bitmap; v2 can only deallocate.
      const newHi = keep ? hi : 0;
      const newLo = (keep ? lo & HOST_OFFSET_LO_MASK : 0) | (zero && !extendedL2 ? ZERO_LO : 0);
      view.setUint32(at, newHi >>> 0);
      view.setUint32(at + 4, newLo >>> 0);
      if (extendedL2) {
        setSubclusterBitmaps(view, at, zero ? ALL_SUBCLUSTERS : 0, 0);
      }
    }
  }

  /**
   * Changes the virtual size. Growing allocates a larger L1 table when the new size needs one: the new table is
   * written and counted first, the header switches to it in one write, the old table is freed last. Shrinking
   * drops every cluster past the new end (and L2 tables wholly past it) before the size field changes; the L1
   * table keeps its size, as qemu keeps it.
   */
  async resize(newSize: number): Promise<void> {
    if (!Number.isSafeInteger(newSize) || newSize < 0 || newSize % 512 !== 0) {
      throw new Qcow2Error('BAD_ARGUMENT', 'The new size must be a multiple of 512', { file: this.image.name });
    }
    await this.beforeFirstWrite();
    const header = this.image.header;
    const { l2Coverage, clusterSize } = this.image.layout;
    const oldSize = header.size;
    if (newSize > oldSize) {
      const neededL1 = Math.ceil(newSize / l2Coverage);
      if (neededL1 > header.l1Size) await this.growL1(neededL1);
    } else if (newSize < oldSize) {
      await this.dropClustersFrom(Math.ceil(newSize / clusterSize) * clusterSize, oldSize);
    }
    await this.writeBackMetadata();
    if (this.bitmaps !== undefined) {
      // The size field and the bitmaps (resized) switch in one header write.
      await this.bitmaps.resize(newSize);
      return;
    }
    await writeHeaderFields(this.image.storage, header, { size: newSize });
  }

  /**
   * Before a snapshot is applied: the active L1 must have at least `l1Entries` entries and the disk the
   * snapshot's size. Clusters past a smaller size are not dropped here: the snapshot's L1 replaces them.
   */
  async resizeForSnapshot(diskSize: number, l1Entries: number): Promise<void> {
    if (l1Entries > this.image.header.l1Size) await this.growL1(l1Entries);
    await this.writeBackMetadata();
    await writeHeaderFields(this.image.storage, this.image.header, { size: diskSize });
  }

  private async growL1(entries: number): Promise<void> {
    const { clusterSize } = this.image.layout;
    const header = this.image.header;
    if (entries * 8 > 32 * 1024 * 1024) throw new Qcow2Error('L1_TOO_LARGE', 'the new size needs an L1 table larger than 32 MiB', { file: this.image.name });
    const clusters = Math.ceil((entries * 8) / clusterSize);
    const newOffset = await this.refcounts.allocate(clusters);
    const table = new Uint8Array(clusters * clusterSize);
    table.set(this.image.activeL1.bytes);
    await this.refcounts.flush();
    await this.image.storage.write(table, newOffset);
    const oldOffset = header.l1TableOffset;
    const oldClusters = Math.ceil((header.l1Size * 8) / clusterSize);
    await writeHeaderFields(this.image.storage, header, { l1Size: entries, l1TableOffset: newOffset });
    this.image.replaceActiveL1(table.subarray(0, entries * 8));
    if (oldClusters > 0) this.pendingFrees.push({ cluster: oldOffset / clusterSize, count: oldClusters });
    this.updateFileSize(newOffset + table.length);
  }

  /** Deallocates guest clusters [from, to) (from cluster aligned) and frees L2 tables wholly inside. */
  private async dropClustersFrom(from: number, to: number): Promise<void> {
    const { clusterSize, clusterBits, l2Coverage, l2Entries, l2EntryBytes, externalDataFile } = this.image.layout;
    const l1 = this.image.activeL1;
    for (let pos = from; pos < to; ) {
      const l1Index = Math.floor(pos / l2Coverage);
      const tableEnd = Math.min(to, (l1Index + 1) * l2Coverage);
      if (l1Index >= l1.entries) break;
      const l2Offset = entryHostOffset(l1.view.getUint32(l1Index * 8), l1.view.getUint32(l1Index * 8 + 4));
      if (l2Offset !== 0) {
        if (pos % l2Coverage === 0) {
          // The whole table goes: clear the L1 entry first, then release the table and what it points to.
          const table = viewOf(await this.image.l2Table(l2Offset));
          for (let i = 0; i < l2Entries; i++) this.queueFreeOfEntry(table.getUint32(i * l2EntryBytes), table.getUint32(i * l2EntryBytes + 4), clusterBits, externalDataFile);
          l1.view.setUint32(l1Index * 8, 0);
          l1.view.setUint32(l1Index * 8 + 4, 0);
          await this.image.storage.write(l1.bytes.subarray(l1Index * 8, l1Index * 8 + 8), this.image.header.l1TableOffset + l1Index * 8);
          this.image.l2Cache.delete(l2Offset);
          this.pendingFrees.push({ cluster: l2Offset / clusterSize, count: 1 });
        } else {
          const owned = await this.l2ForWrite(l1Index);
          const table = await this.image.l2Table(owned);
          this.image.l2Cache.markDirty(owned);
          const view = viewOf(table);
          for (let cluster = pos / clusterSize; cluster * clusterSize < tableEnd; cluster++) {
            const at = (cluster % l2Entries) * l2EntryBytes;
            this.queueFreeOfEntry(view.getUint32(at), view.getUint32(at + 4), clusterBits, externalDataFile);
            for (let b = 0; b < l2EntryBytes; b += 4) view.setUint32(at + b, 0);
          }
        }
      }
      pos = tableEnd;
    }
  }

  /**
   * Maps every guest cluster to a host cluster (qemu-img create -o preallocation=…): metadata only allocates and
   * maps them (with extended L2 the subclusters stay unallocated, as qemu does); falloc and full also write the
   * clusters' bytes as zeros, so the file really holds them (Node offers no fallocate).
   */
  async preallocate(mode: 'metadata' | 'falloc' | 'full'): Promise<void> {
    const { clusterSize, l2Entries, l2EntryBytes, l2Coverage, extendedL2, externalDataFile } = this.image.layout;
    const size = this.image.virtualSize;
    const clusters = Math.ceil(size / clusterSize);
    for (let l1Index = 0; l1Index * l2Coverage < size; l1Index++) {
      const l2Offset = await this.l2ForWrite(l1Index);
      const table = await this.image.l2Table(l2Offset);
      this.image.l2Cache.markDirty(l2Offset);
      const view = viewOf(table);
      const first = l1Index * l2Entries;
      const count = Math.min(l2Entries, clusters - first);
      const host = externalDataFile ? first * clusterSize : await this.refcounts.allocate(count);
      for (let i = 0; i < count; i++) {
        const at = i * l2EntryBytes;
        if (view.getUint32(at) !== 0 || view.getUint32(at + 4) !== 0) continue;
        const clusterHost = host + i * clusterSize;
        setTableEntry(view, at, clusterHost, true);
        if (extendedL2 && mode !== 'metadata') view.setUint32(at + ALLOC_BITMAP_AT, ALL_SUBCLUSTERS);
      }
      const end = host + count * clusterSize;
      if (mode === 'metadata') {
        if (end > (await this.image.dataStorage.size())) await this.image.dataStorage.truncate(end);
      } else {
        const zeros = new Uint8Array(Math.min(count * clusterSize, 4 * 1024 * 1024));
        for (let at = host; at < end; at += zeros.length) await this.image.dataStorage.write(zeros.subarray(0, Math.min(zeros.length, end - at)), at);
      }
      this.updateFileSize(externalDataFile ? 0 : end);
      if (this.image.l2Cache.full) await this.writeBackMetadata();
    }
    await this.flush();
  }

  private updateFileSize(end = 0): void {
    if (end > this.image.fileSize) this.image.fileSize = end;
  }

  /** Writes metadata back in order: refcount blocks, L2 tables, then the refcount drops of freed clusters. */
  async writeBackMetadata(): Promise<void> {
    await this.refcounts.flush();
    for (const [offset, bytes] of this.image.l2Cache.dirty()) {
      await this.image.storage.write(bytes, offset);
      this.image.l2Cache.markClean(offset);
    }
    // Freed clusters may be reused from here on: stop packing compressed streams into a cluster being freed.
    if (this.pendingFrees.length > 0) this.compressedCursor = 0;
    while (this.pendingFrees.length > 0) {
      const { cluster, count } = this.pendingFrees.shift()!;
      await this.refcounts.free(cluster * this.clusterSize, count);
    }
    await this.refcounts.flush();
  }

  /** The end of writing: metadata written back, tracked bitmaps stored, then flush(durable). */
  async close(durable = true): Promise<void> {
    await this.writeBackMetadata();
    await this.bitmaps?.store();
    await this.flush(durable);
  }

  /** Metadata written back and, when `durable`, everything on stable storage (fsync). */
  async flush(durable = true): Promise<void> {
    await this.writeBackMetadata();
    if (!durable) return;
    await this.image.dataStorage.flush();
    if (this.image.dataStorage !== this.image.storage) await this.image.storage.flush();
  }
}
