import { Qcow2Error } from '../errors.js';
import { MAX_L1_BYTES } from '../format/constants.js';
import { entryHostOffset } from '../format/table-entries.js';
import { viewOf } from '../format/struct.js';
import { writeHeaderFields } from './header-rewrite.js';
import type { WriteContext } from './write-context.js';

/**
 * Resizing the disk's mapping (qemu's qcow2_co_truncate and qcow2_grow_l1_table), up to the size field, which
 * the writer switches last (alone, or with the persistent bitmaps resized, in one header write).
 *
 * Order. Growing: a larger L1 table when the new size needs one — written and counted first, the header
 * switched to it in one write (l1_size and l1_table_offset together), the old table released last. Shrinking:
 * every cluster past the new end is dropped (an L2 table wholly past it: its L1 entry cleared first, then the
 * table and what it points to released) before the size field changes; the L1 table keeps its size, as qemu's.
 */

/** Makes the mapping fit `newSize` (a multiple of 512), everything but the size field; metadata written back. */
export async function resizeMapping(context: WriteContext, newSize: number): Promise<void> {
  const header = context.image.header;
  const { l2Coverage, clusterSize } = context.image.layout;
  const oldSize = header.size;
  if (newSize > oldSize) {
    const neededL1 = Math.ceil(newSize / l2Coverage);
    if (neededL1 > header.l1Size) await growL1(context, neededL1);
  } else if (newSize < oldSize) {
    await dropClustersFrom(context, Math.ceil(newSize / clusterSize) * clusterSize, oldSize);
  }
  await context.writeBackMetadata();
}

/**
 * Before a snapshot is applied: the active L1 must have at least `l1Entries` entries and the disk the
 * snapshot's size. Clusters past a smaller size are not dropped here: the snapshot's L1 replaces them.
 */
export async function resizeForSnapshot(context: WriteContext, diskSize: number, l1Entries: number): Promise<void> {
  const { image } = context;
  if (l1Entries > image.header.l1Size) await growL1(context, l1Entries);
  await context.writeBackMetadata();
  await writeHeaderFields(image.storage, image.header, { size: diskSize });
}

/** Moves the active L1 table to a new one of `entries` entries (the old entries kept). */
async function growL1(context: WriteContext, entries: number): Promise<void> {
  const { image, refcounts } = context;
  const { clusterSize } = image.layout;
  const header = image.header;
  if (entries * 8 > MAX_L1_BYTES) throw new Qcow2Error('L1_TOO_LARGE', 'the new size needs an L1 table larger than 32 MiB', { file: image.name });
  const clusters = Math.ceil((entries * 8) / clusterSize);
  const newOffset = await refcounts.allocate(clusters);
  const table = new Uint8Array(clusters * clusterSize);
  table.set(image.activeL1.bytes);
  await refcounts.flush();
  await image.storage.write(table, newOffset);
  const oldOffset = header.l1TableOffset;
  const oldClusters = Math.ceil((header.l1Size * 8) / clusterSize);
  await writeHeaderFields(image.storage, header, { l1Size: entries, l1TableOffset: newOffset });
  image.replaceActiveL1(table.subarray(0, entries * 8));
  if (oldClusters > 0) context.release(oldOffset / clusterSize, oldClusters);
  context.fileReaches(newOffset + table.length);
}

/** Deallocates guest clusters [from, to) (from cluster aligned) and releases L2 tables wholly inside. */
async function dropClustersFrom(context: WriteContext, from: number, to: number): Promise<void> {
  const { image } = context;
  const { clusterSize, l2Coverage, l2Entries, l2EntryBytes } = image.layout;
  const l1 = image.activeL1;
  for (let pos = from; pos < to; ) {
    const l1Index = Math.floor(pos / l2Coverage);
    const tableEnd = Math.min(to, (l1Index + 1) * l2Coverage);
    if (l1Index >= l1.entries) break;
    const l2Offset = entryHostOffset(l1.view.getUint32(l1Index * 8), l1.view.getUint32(l1Index * 8 + 4));
    if (l2Offset !== 0) {
      if (pos % l2Coverage === 0) {
        // The whole table goes: clear the L1 entry first, then release the table and what it points to.
        const table = viewOf(await image.l2Table(l2Offset));
        for (let i = 0; i < l2Entries; i++) context.releaseEntry(table.getUint32(i * l2EntryBytes), table.getUint32(i * l2EntryBytes + 4));
        l1.view.setUint32(l1Index * 8, 0);
        l1.view.setUint32(l1Index * 8 + 4, 0);
        await context.writeL1Entries(l1Index, 1);
        image.l2Cache.delete(l2Offset);
        context.release(l2Offset / clusterSize, 1);
      } else {
        const { view } = await context.dirtyL2(l1Index);
        for (let cluster = pos / clusterSize; cluster * clusterSize < tableEnd; cluster++) {
          const at = (cluster % l2Entries) * l2EntryBytes;
          context.releaseEntry(view.getUint32(at), view.getUint32(at + 4));
          for (let b = 0; b < l2EntryBytes; b += 4) view.setUint32(at + b, 0);
        }
      }
    }
    pos = tableEnd;
  }
}
