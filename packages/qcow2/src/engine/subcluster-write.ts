import {
  ALLOC_BITMAP_AT,
  ALL_SUBCLUSTERS,
  COMPRESSED_HI,
  COPIED_HI,
  ZERO_BITMAP_AT,
  entryHostOffset,
  setSubclusterBitmaps,
  setTableEntry,
  subclusterRange,
} from '../format/table-entries.js';
import type { BelowReader, WriteContext } from './write-context.js';

/**
 * A write that covers part of one cluster of an extended-L2 image, as qemu does it: only the subclusters the
 * write touches become allocated; the others keep reading from below or as zeros. A subcluster touched only
 * partly is completed from what it read before. An allocated, unshared cluster is written in place; an
 * unallocated one gets a new cluster holding just the touched subclusters; a cluster shared with a snapshot
 * (COPIED clear) is copied whole first; a compressed cluster is decompressed into a fully allocated one.
 */
export async function writeSubclusters(
  context: WriteContext,
  below: BelowReader,
  l2Offset: number,
  view: DataView,
  index: number,
  clusterStart: number,
  from: number,
  data: Uint8Array,
): Promise<void> {
  const { image } = context;
  const { clusterSize, subclusterSize, l2EntryBytes, externalDataFile } = image.layout;
  const at = index * l2EntryBytes;
  const hi = view.getUint32(at);
  const lo = view.getUint32(at + 4);
  const zeroBits = view.getUint32(at + ZERO_BITMAP_AT);
  const allocBits = view.getUint32(at + ALLOC_BITMAP_AT);
  const compressed = (hi & COMPRESSED_HI) !== 0;
  const copied = (hi & COPIED_HI) !== 0;
  const host = compressed ? 0 : entryHostOffset(hi, lo);
  const allocated = !compressed && (host !== 0 || (externalDataFile && copied));

  const first = Math.floor((from - clusterStart) / subclusterSize);
  const last = Math.floor((from + data.length - 1 - clusterStart) / subclusterSize);
  const touched = subclusterRange(first, last);
  image.l2Cache.markDirty(l2Offset);

  // The whole cluster as the guest sees it now, only when something must be carried over.
  const needsOld = compressed || (allocated && !copied) || (from - clusterStart) % subclusterSize !== 0 || (from + data.length - clusterStart) % subclusterSize !== 0;
  const buffer = new Uint8Array(clusterSize);
  if (needsOld) await context.readGuest(clusterStart, buffer, below);
  buffer.set(data, from - clusterStart);

  const spanStart = first * subclusterSize;
  const spanEnd = (last + 1) * subclusterSize;
  let newHost: number;
  let newAlloc: number;
  if (allocated && copied) {
    newHost = host;
    newAlloc = (allocBits | touched) >>> 0;
    await image.dataStorage.write(buffer.subarray(spanStart, spanEnd), host + spanStart);
  } else {
    // External data files map guest offset to the same host offset and keep no refcounts for data.
    newHost = externalDataFile ? clusterStart : await context.refcounts.allocate(1);
    if (compressed) {
      newAlloc = ALL_SUBCLUSTERS;
      await image.dataStorage.write(buffer, newHost);
    } else if (allocated) {
      // Shared with a snapshot: keep every subcluster that held data, plus the new ones.
      newAlloc = (allocBits | touched) >>> 0;
      await image.dataStorage.write(buffer, newHost);
      context.releaseEntry(hi, lo);
    } else {
      newAlloc = touched;
      await image.dataStorage.write(buffer.subarray(spanStart, spanEnd), newHost + spanStart);
    }
    if (compressed) context.releaseEntry(hi, lo);
  }
  setTableEntry(view, at, newHost, true);
  setSubclusterBitmaps(view, at, newAlloc === ALL_SUBCLUSTERS ? 0 : zeroBits & ~touched, newAlloc);
  if (!externalDataFile) context.fileReaches(newHost + clusterSize);
}
