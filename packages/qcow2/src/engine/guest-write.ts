import { ALL_SUBCLUSTERS, COMPRESSED_HI, COPIED_HI, ZERO_LO, entryHostOffset, setSubclusterBitmaps, setTableEntry } from '../format/table-entries.js';
import { viewOf } from '../format/struct.js';
import { writeSubclusters } from './subcluster-write.js';
import type { BelowReader, WriteContext } from './write-context.js';

/**
 * Guest writes: cluster allocation and copy-on-write (qemu's qcow2-cluster.c handle_copied / handle_alloc /
 * perform_cow). A cluster this image owns alone (COPIED) is written in place; any other cluster of the range
 * gets a new host cluster, completed from its old contents (own data, zeros or what lies below) where the write
 * covers it partly. Runs of neighbouring clusters go in one write each way.
 *
 * Order (write-context.ts): new clusters counted in memory → data written → at write-back, refcount blocks →
 * L2 entries (COPIED) → the old clusters' refcounts dropped.
 */
export async function writeGuest(context: WriteContext, offset: number, data: Uint8Array, below: BelowReader): Promise<void> {
  context.bitmaps?.changed(offset, data.length);
  const { l2Coverage } = context.image.layout;
  const end = offset + data.length;
  let pos = offset;
  while (pos < end) {
    const l1Index = Math.floor(pos / l2Coverage);
    const tableEnd = Math.min(end, (l1Index + 1) * l2Coverage);
    await writeInTable(context, l1Index, pos, data.subarray(pos - offset, tableEnd - offset), below);
    pos = tableEnd;
  }
  await context.writeBackIfFull();
}

/** Writes within the range of one L2 table: runs of in-place clusters and runs needing allocation. */
async function writeInTable(context: WriteContext, l1Index: number, offset: number, data: Uint8Array, below: BelowReader): Promise<void> {
  const { image } = context;
  const { clusterSize, l2EntryBytes, extendedL2, externalDataFile } = image.layout;
  const l2Offset = await context.l2ForWrite(l1Index);
  const table = await image.l2Table(l2Offset);
  const view = viewOf(table);
  const end = offset + data.length;
  const firstCluster = Math.floor(offset / clusterSize);
  const lastCluster = Math.floor((end - 1) / clusterSize);
  const tableFirstCluster = l1Index * image.layout.l2Entries;

  let runStart = firstCluster; // first cluster of the current run
  let runInPlace: boolean | undefined;
  let runHost = 0; // in-place runs: host offset of runStart's cluster
  const flushRun = async (runEnd: number): Promise<void> => {
    if (runInPlace === undefined) return;
    const from = Math.max(offset, runStart * clusterSize);
    const to = Math.min(end, runEnd * clusterSize);
    if (runInPlace) {
      await image.dataStorage.write(data.subarray(from - offset, to - offset), runHost + (from - runStart * clusterSize));
    } else {
      await allocateAndWrite(context, l2Offset, view, tableFirstCluster, runStart, runEnd, from, data.subarray(from - offset, to - offset), below);
    }
  };
  for (let cluster = firstCluster; cluster <= lastCluster; cluster++) {
    const index = cluster - tableFirstCluster;
    const clusterStart = cluster * clusterSize;
    const partial = clusterStart < offset || clusterStart + clusterSize > end;
    if (extendedL2 && partial && clusterStart + clusterSize <= image.virtualSize) {
      // A partial write touches only some subclusters: handled per cluster, the rest keep their state.
      await flushRun(cluster);
      runInPlace = undefined;
      const from = Math.max(offset, clusterStart);
      const to = Math.min(end, clusterStart + clusterSize);
      await writeSubclusters(context, below, l2Offset, view, index, clusterStart, from, data.subarray(from - offset, to - offset));
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
      image.l2Cache.markDirty(l2Offset);
    }
    const continues = runInPlace === inPlace && (!inPlace || runHost + (cluster - runStart) * clusterSize === host);
    if (!continues) {
      await flushRun(cluster);
      runStart = cluster;
      runInPlace = inPlace;
      runHost = host;
    }
  }
  await flushRun(lastCluster + 1);
}

/**
 * Clusters [runStart, runEnd) get new host clusters holding `data` (at guest `from`), completed from the old
 * contents where the write covers a cluster partly. Old clusters are released after the new entries are written.
 */
async function allocateAndWrite(
  context: WriteContext,
  l2Offset: number,
  view: DataView,
  tableFirstCluster: number,
  runStart: number,
  runEnd: number,
  from: number,
  data: Uint8Array,
  below: BelowReader,
): Promise<void> {
  const { image } = context;
  const { clusterSize, l2EntryBytes, extendedL2, externalDataFile } = image.layout;
  // Dirty before the first await that could load other tables: dirty tables are never evicted.
  image.l2Cache.markDirty(l2Offset);
  const count = runEnd - runStart;
  const guestStart = runStart * clusterSize;
  // External data files map guest offset to the same host offset and keep no refcounts for data.
  const host = externalDataFile ? guestStart : await context.refcounts.allocate(count);
  const aligned = from === guestStart && data.length === count * clusterSize;
  if (aligned) {
    await image.dataStorage.write(data, host);
  } else {
    const buffer = new Uint8Array(count * clusterSize);
    if (from > guestStart) await context.readGuest(guestStart, buffer.subarray(0, clusterSize), below);
    const dataEnd = from + data.length;
    if (dataEnd < runEnd * clusterSize && (count > 1 || from === guestStart)) {
      await context.readGuest((runEnd - 1) * clusterSize, buffer.subarray((count - 1) * clusterSize), below);
    }
    buffer.set(data, from - guestStart);
    await image.dataStorage.write(buffer, host);
  }
  for (let cluster = runStart; cluster < runEnd; cluster++) {
    const at = (cluster - tableFirstCluster) * l2EntryBytes;
    context.releaseEntry(view.getUint32(at), view.getUint32(at + 4));
    setTableEntry(view, at, host + (cluster - runStart) * clusterSize, true);
    if (extendedL2) setSubclusterBitmaps(view, at, 0, ALL_SUBCLUSTERS);
  }
}
