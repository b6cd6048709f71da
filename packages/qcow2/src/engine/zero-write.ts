import {
  ALLOC_BITMAP_AT,
  ALL_SUBCLUSTERS,
  COMPRESSED_HI,
  COPIED_HI,
  HOST_OFFSET_LO_MASK,
  ZERO_BITMAP_AT,
  ZERO_LO,
  entryHostOffset,
  setSubclusterBitmaps,
  subclusterRange,
} from '../format/table-entries.js';
import { viewOf } from '../format/struct.js';
import { isZero } from '../io/zero-detect.js';
import { writeGuest } from './guest-write.js';
import type { BelowReader, WriteContext } from './write-context.js';

/**
 * Zero writes and discards (qemu's qcow2_cluster_zeroize and qcow2_cluster_discard). Whole clusters get the zero
 * flag (v3) or zero subcluster bits (extended L2) and keep their host cluster unless unmapped; v2, which has no
 * zero flag, deallocates them when nothing shows through from below, else stores zero bytes. Partial clusters
 * are written as zero bytes (guest-write.ts).
 *
 * Order: the L2 entries change in the cached table → at write-back the table is written → the refcounts of the
 * clusters it no longer points at drop.
 */
export interface ZeroOptions {
  /** Release the host clusters of whole zeroed clusters (write -z -u, discard). */
  unmap: boolean;
  /** The image has a backing file (zeros must hide it). */
  hasBacking: boolean;
  /** A discard: whole clusters only, and v2 may expose what lies below. */
  discard: boolean;
}

/** Makes [offset, offset+length) (inside the disk, not empty) read as zeros, or discards it with `options.discard`. */
export async function zeroRange(context: WriteContext, offset: number, length: number, below: BelowReader, options: ZeroOptions): Promise<void> {
  const { image } = context;
  context.bitmaps?.changed(offset, length);
  const { clusterSize, subclusterSize, extendedL2, l2Coverage } = image.layout;
  // Zero writes work in subclusters with extended L2 (qemu sets zero bits); discards in whole clusters.
  const unit = extendedL2 && !options.discard ? subclusterSize : clusterSize;
  const end = offset + length;
  // The last unit counts as whole when the disk ends inside it.
  let firstFull = Math.ceil(offset / unit) * unit;
  let lastFull = end === image.virtualSize ? end : Math.floor(end / unit) * unit;
  const v2 = image.header.version === 2;
  if (!options.discard && !(v2 && options.hasBacking)) {
    // Like qemu: a partly zeroed unit whose other bytes already read as zeros is zeroed whole (flag, no data).
    const head = firstFull - unit;
    if (offset < firstFull && (await readsZeroOutside(context, head, unit, offset, end, below))) firstFull = head;
    const tail = lastFull;
    if (end > lastFull && end < image.virtualSize && tail >= firstFull && (await readsZeroOutside(context, tail, unit, offset, end, below))) {
      lastFull = Math.min(tail + unit, image.virtualSize);
    }
  }
  if (firstFull >= lastFull) {
    if (!options.discard) await writeGuest(context, offset, new Uint8Array(length), below);
    return;
  }
  if (!options.discard) {
    if (offset < firstFull) await writeGuest(context, offset, new Uint8Array(firstFull - offset), below);
    if (lastFull < end) await writeGuest(context, lastFull, new Uint8Array(end - lastFull), below);
    if (v2 && options.hasBacking) {
      // No zero flag in v2: zeros must be stored, or the backing file would show through.
      for (let pos = firstFull; pos < lastFull; pos += 4 * 1024 * 1024) {
        await writeGuest(context, pos, new Uint8Array(Math.min(4 * 1024 * 1024, lastFull - pos)), below);
      }
      return;
    }
  }
  // Whole clusters get zero flags (or bitmaps); the subclusters of a partly covered cluster get zero bits.
  const wholeFrom = Math.ceil(firstFull / clusterSize) * clusterSize;
  const wholeTo = lastFull === image.virtualSize ? lastFull : Math.floor(lastFull / clusterSize) * clusterSize;
  if (wholeFrom >= wholeTo) {
    // No whole cluster: at most the tail of one cluster and the head of the next.
    await zeroSubclusters(context, firstFull, Math.min(lastFull, wholeFrom), below);
    if (lastFull > wholeFrom) await zeroSubclusters(context, wholeFrom, lastFull, below);
  } else {
    if (firstFull < wholeFrom) await zeroSubclusters(context, firstFull, wholeFrom, below);
    for (let pos = wholeFrom; pos < wholeTo; ) {
      const l1Index = Math.floor(pos / l2Coverage);
      const tableEnd = Math.min(wholeTo, (l1Index + 1) * l2Coverage);
      await zeroClustersInTable(context, l1Index, pos, tableEnd, options);
      pos = tableEnd;
    }
    if (wholeTo < lastFull) await zeroSubclusters(context, wholeTo, lastFull, below);
  }
  await context.writeBackIfFull();
}

/**
 * Extended L2: makes subclusters [from, to) of one cluster read as zeros by their bitmap bits, as qemu does; a
 * compressed cluster has no bitmap, so its subclusters are written as zero bytes instead.
 */
async function zeroSubclusters(context: WriteContext, from: number, to: number, below: BelowReader): Promise<void> {
  const { image } = context;
  const { clusterSize, subclusterSize, l2Coverage, l2Entries, l2EntryBytes } = image.layout;
  const cluster = Math.floor(from / clusterSize) * clusterSize;
  const l2Offset = await context.l2ForWrite(Math.floor(from / l2Coverage));
  const view = viewOf(await image.l2Table(l2Offset));
  const at = ((cluster / clusterSize) % l2Entries) * l2EntryBytes;
  if ((view.getUint32(at) & COMPRESSED_HI) !== 0) {
    await writeGuest(context, from, new Uint8Array(to - from), below);
    return;
  }
  image.l2Cache.markDirty(l2Offset);
  const first = (from - cluster) / subclusterSize;
  const last = Math.ceil((to - cluster) / subclusterSize) - 1;
  const mask = subclusterRange(first, last);
  setSubclusterBitmaps(view, at, view.getUint32(at + ZERO_BITMAP_AT) | mask, view.getUint32(at + ALLOC_BITMAP_AT) & ~mask);
}

/** Whether the `unit` bytes at `at` read as zeros everywhere outside [from, to). */
async function readsZeroOutside(context: WriteContext, at: number, unit: number, from: number, to: number, below: BelowReader): Promise<boolean> {
  const size = Math.min(unit, context.image.virtualSize - at);
  const bytes = new Uint8Array(size);
  await context.readGuest(at, bytes, below);
  const start = Math.max(0, from - at);
  const end = Math.min(size, to - at);
  return isZero(bytes.subarray(0, start)) && isZero(bytes.subarray(end));
}

/** Whole clusters [from, to) of one L2 table read as zeros (v3), or are deallocated (v2, discard). */
async function zeroClustersInTable(context: WriteContext, l1Index: number, from: number, to: number, options: ZeroOptions): Promise<void> {
  const { image } = context;
  const { clusterSize, l2EntryBytes, l2Entries, extendedL2, externalDataFile } = image.layout;
  const v2 = image.header.version === 2;
  const l1 = image.activeL1;
  if (l1Index < l1.entries && v2 && entryHostOffset(l1.view.getUint32(l1Index * 8), l1.view.getUint32(l1Index * 8 + 4)) === 0) {
    return; // v2 deallocation of a range with no L2 table: nothing to do.
  }
  const { view } = await context.dirtyL2(l1Index);
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
    if (!keep) context.releaseEntry(hi, lo);
    // v3 standard entries carry the zero flag; extended L2 says it in the bitmap; v2 can only deallocate.
    const newHi = keep ? hi : 0;
    const newLo = (keep ? lo & HOST_OFFSET_LO_MASK : 0) | (zero && !extendedL2 ? ZERO_LO : 0);
    view.setUint32(at, newHi >>> 0);
    view.setUint32(at + 4, newLo >>> 0);
    if (extendedL2) setSubclusterBitmaps(view, at, zero ? ALL_SUBCLUSTERS : 0, 0);
  }
}
