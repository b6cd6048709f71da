import { ALLOC_BITMAP_AT, ALL_SUBCLUSTERS, setTableEntry } from '../format/table-entries.js';
import type { Preallocation } from './create-image.js';
import type { WriteContext } from './write-context.js';


/**
 * Maps every guest cluster to a host cluster (qemu-img create -o preallocation=…): metadata only allocates and
 * maps them (with extended L2 the subclusters stay unallocated, as qemu does); falloc and full also write the
 * clusters' bytes as zeros, so the file really holds them (Node offers no fallocate). Entries already mapped
 * are kept. Order as guest writes: clusters counted → zeros written → at write-back, refcounts then L2 tables.
 */
export async function preallocate(context: WriteContext, mode: Exclude<Preallocation, 'off'>): Promise<void> {
  const { image, refcounts } = context;
  const { clusterSize, l2Entries, l2EntryBytes, l2Coverage, extendedL2, externalDataFile } = image.layout;
  const size = image.virtualSize;
  const clusters = Math.ceil(size / clusterSize);
  for (let l1Index = 0; l1Index * l2Coverage < size; l1Index++) {
    const { view } = await context.dirtyL2(l1Index);
    const first = l1Index * l2Entries;
    const count = Math.min(l2Entries, clusters - first);
    const host = externalDataFile ? first * clusterSize : await refcounts.allocate(count);
    for (let i = 0; i < count; i++) {
      const at = i * l2EntryBytes;
      if (view.getUint32(at) !== 0 || view.getUint32(at + 4) !== 0) continue;
      setTableEntry(view, at, host + i * clusterSize, true);
      if (extendedL2 && mode !== 'metadata') view.setUint32(at + ALLOC_BITMAP_AT, ALL_SUBCLUSTERS);
    }
    const end = host + count * clusterSize;
    if (mode === 'metadata') {
      if (end > (await image.dataStorage.size())) await image.dataStorage.truncate(end);
    } else {
      const zeros = new Uint8Array(Math.min(count * clusterSize, 4 * 1024 * 1024));
      for (let at = host; at < end; at += zeros.length) await image.dataStorage.write(zeros.subarray(0, Math.min(zeros.length, end - at)), at);
    }
    if (!externalDataFile) context.fileReaches(end);
    if (image.l2Cache.full) await context.writeBackMetadata();
  }
}
