import { entryHostOffset, l2EntryClusters } from '../format/table-entries.js';
import { viewOf } from '../format/struct.js';
import { voidPersistentBitmaps } from './header-rewrite.js';
import { Qcow2Writer } from './image-writer.js';
import type { Qcow2Image } from './qcow2-image.js';

/** What makeEmpty did to an image (the clusters it dropped). */
export interface MakeEmptyResult {
  /** L2 tables dropped from the active L1 table. */
  l2Tables: number;
  /** The file's size before and after trimming its free tail. */
  fileSizeBefore: number;
  fileSizeAfter: number;
}

/**
 * Empties the active state of an image, as qemu's bdrv_make_empty does at the end of `qemu-img commit`: every
 * guest cluster becomes unallocated, so the image reads through to its backing file again (not zeros: this is
 * qemu's "full discard", unlike a guest discard which leaves zero flags). Internal snapshots keep their data.
 *
 * qemu 7.2 does this for a v3 image without snapshots or bitmaps by rebuilding the image from scratch
 * (make_completely_empty: dirty bit, L1 and refcount structures zeroed, file truncated to 3 + L1 clusters),
 * relying on the dirty bit to repair refcounts after a crash. Here the order is the one every other write
 * keeps, so no repair is ever needed: (1) the whole active L1 table is cleared in one write and flushed — from
 * then on nothing points at the old L2 tables, and the image reads through; (2) the refcounts of the L2 tables
 * and of every cluster they reached drop, and are written back; (3) the file is cut after its last cluster in
 * use. A process killed during (1) leaves every L1 entry either old or cleared (each reads the same guest data,
 * once the backing file holds the committed data); during (2) or (3), only leaked clusters.
 *
 * Persistent bitmaps are not kept true through an emptying: their autoclear bit is cleared first
 * (voidPersistentBitmaps), so qemu treats them as inconsistent.
 */
export async function makeEmpty(image: Qcow2Image, options: { durable?: boolean } = {}): Promise<MakeEmptyResult> {
  const durable = options.durable ?? true;
  const writer = await Qcow2Writer.attach(image);
  const refcounts = writer.refcounts;
  const { clusterSize, clusterBits, l2Entries, l2EntryBytes, externalDataFile } = image.layout;
  const header = image.header;
  const fileSizeBefore = image.fileSize;

  await voidPersistentBitmaps(image);

  const l1 = image.activeL1;
  const tables: number[] = [];
  for (let i = 0; i < l1.entries; i++) {
    const offset = entryHostOffset(l1.view.getUint32(i * 8), l1.view.getUint32(i * 8 + 4));
    if (offset !== 0) tables.push(offset);
  }
  if (tables.length > 0) {
    // (1) Pointers cleared, in one write of the whole table, and on stable storage before any refcount drops.
    await image.storage.write(new Uint8Array(l1.bytes.length), header.l1TableOffset);
    if (durable) await image.storage.flush();
    l1.bytes.fill(0);

    // (2) Refcounts down: every cluster each table reached (once per reference, as qemu counts a cluster once
    // for every L1 table that reaches it), then the table itself. The tables are still on disk: nothing can
    // reuse their clusters before their own refcount drops, last.
    for (let t = 0; t < tables.length; t++) {
      const view = viewOf(await image.l2Table(tables[t]!));
      for (let i = 0; i < l2Entries; i++) {
        const clusters = l2EntryClusters(view.getUint32(i * l2EntryBytes), view.getUint32(i * l2EntryBytes + 4), clusterBits, externalDataFile);
        if (clusters !== undefined) await refcounts.adjust(clusters.first, clusters.count, -1);
      }
      await refcounts.free(tables[t]!, 1);
      image.l2Cache.delete(tables[t]!);
    }
    await refcounts.flush();
  }
  image.invalidateCompressedCache();
  await writer.flush(durable);

  // (3) Cut the free tail of the file, as qemu's emptied image ends after its last structure.
  const clusters = Math.ceil(image.fileSize / clusterSize);
  let last = clusters - 1;
  while (last >= 0 && (await refcounts.get(last)) === 0) last--;
  const end = (last + 1) * clusterSize;
  if (end < image.fileSize) {
    await image.truncateFile(end);
    if (durable) await image.storage.flush();
  }
  return { l2Tables: tables.length, fileSizeBefore, fileSizeAfter: image.fileSize };
}
