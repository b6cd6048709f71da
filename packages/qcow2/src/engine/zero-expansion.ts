import { Qcow2Error } from '../errors.js';
import { COMPRESSED_HI, ZERO_LO, entryHostOffset, setTableEntry } from '../format/table-entries.js';
import { viewOf } from '../format/struct.js';
import type { L1Table } from './mapping.js';
import type { Qcow2Image } from './qcow2-image.js';
import type { Refcounts } from './refcounts.js';

const ZERO_WRITE = 4 * 1024 * 1024;

/**
 * Before a downgrade to compat=0.10 (which has no zero flag): every zero cluster in the active L1 and in every
 * snapshot's L1 becomes something v2 reads as zeros (qemu's qcow2_expand_zero_clusters).
 *
 * - A zero cluster with a host cluster (preallocated) that nothing else references: the host cluster is written
 *   with zeros, then the flag is cleared. Killed between the two, the entry still reads zeros either way. When
 *   the host cluster is shared (a snapshot still holds its data), it is left alone and handled as below, its
 *   references dropped once the table no longer points at it.
 * - A zero cluster without one, in an image with no backing file: the entry is cleared (unallocated reads
 *   zeros).
 * - With a backing file (where unallocated would show the backing file): a new cluster, counted once per L1
 *   that reaches the L2 table (the table's own refcount) and written with zeros, before the entry points at it.
 *   Killed in between, the new cluster only leaks.
 *
 * Shared L2 tables (snapshots) are changed in place once: the change reads the same for every L1 sharing them.
 * The whole image is walked; the L2 tables are read one at a time. Returns how many shared clusters lost
 * references (their other users' COPIED flags may then need recomputing).
 */
export async function expandZeroClusters(
  image: Qcow2Image,
  refcounts: Refcounts,
  options: { hasBacking: boolean; onProgress?: (done: number, total: number) => void },
): Promise<{ releasedShared: number }> {
  const { clusterSize, l2Entries, l2EntryBytes, extendedL2 } = image.layout;
  if (extendedL2) throw new Qcow2Error('BAD_ARGUMENT', 'zero clusters of extended L2 tables cannot be expanded', { file: image.name });
  const l1Tables: L1Table[] = [image.activeL1];
  for (const snapshot of image.snapshots) l1Tables.push(await image.snapshotL1(snapshot));
  const done = new Set<number>();
  let releasedShared = 0;
  const total = l1Tables.reduce((n, l1) => n + l1.entries, 0);
  let walked = 0;
  const zeros = new Uint8Array(Math.min(ZERO_WRITE, clusterSize));
  for (const l1 of l1Tables) {
    for (let i = 0; i < l1.entries; i++) {
      options.onProgress?.(++walked, total);
      const l2Offset = entryHostOffset(l1.view.getUint32(i * 8), l1.view.getUint32(i * 8 + 4));
      if (l2Offset === 0 || done.has(l2Offset)) continue;
      done.add(l2Offset);
      if (l2Offset + clusterSize > image.fileSize) throw new Qcow2Error('TRUNCATED', `L2 table at 0x${l2Offset.toString(16)} lies past the end of the file`, { file: image.name });
      const table = new Uint8Array(clusterSize);
      await image.storage.read(table, l2Offset);
      const view = viewOf(table);
      const l2Refcount = await refcounts.get(l2Offset / clusterSize);
      let changed = false;
      const released: number[] = [];
      for (let j = 0; j < l2Entries; j++) {
        const at = j * l2EntryBytes;
        const hi = view.getUint32(at);
        const lo = view.getUint32(at + 4);
        if ((hi & COMPRESSED_HI) !== 0 || (lo & ZERO_LO) === 0) continue;
        const host = entryHostOffset(hi, lo);
        // A preallocated zero cluster can take zeros in place only when this entry is all that references it:
        // qemu leaves zero flags on clusters a snapshot still holds (write -z after a snapshot), and writing
        // zeros there would change the snapshot (qemu 7.2's downgrade does).
        const inPlace = host !== 0 && (await refcounts.get(host / clusterSize)) === l2Refcount;
        if (inPlace) {
          for (let written = 0; written < clusterSize; written += zeros.length) await image.dataStorage.write(zeros, host + written);
          view.setUint32(at + 4, (lo & ~ZERO_LO) >>> 0);
        } else if (!options.hasBacking) {
          view.setUint32(at, 0);
          view.setUint32(at + 4, 0);
        } else {
          const cluster = await refcounts.allocate(1);
          if (l2Refcount > 1) await refcounts.adjust(cluster / clusterSize, 1, l2Refcount - 1);
          await refcounts.flush();
          for (let written = 0; written < clusterSize; written += zeros.length) await image.storage.write(zeros, cluster + written);
          setTableEntry(view, at, cluster, l2Refcount === 1);
          image.fileReaches(cluster + clusterSize);
        }
        // The shared cluster loses this entry's references, after the table no longer points at it.
        if (host !== 0 && !inPlace) released.push(host);
        changed = true;
      }
      if (changed) {
        // The data (zeros, new clusters and their refcounts) is on disk before the table that points at it.
        await image.dataStorage.flush();
        await image.storage.write(table, l2Offset);
        for (const host of released) await refcounts.adjust(host / clusterSize, 1, -l2Refcount);
        releasedShared += released.length;
        await refcounts.flush();
      }
    }
  }
  image.l2Cache.clear();
  await image.storage.flush();
  return { releasedShared };
}
