import { Qcow2Error } from '../errors.js';
import { checkBitmapEntryConstraints, decodeBitmapDirectory, type BitmapDirectoryEntry } from '../format/bitmap-directory.js';
import { bitmapTableEntryValid } from '../format/bitmap-table.js';
import { AutoclearFeature, MAX_L1_BYTES } from '../format/constants.js';
import { bitmapsExtensionOf } from '../format/header-extensions.js';
import { hasBit } from '../format/header.js';
import { REFCOUNT_TABLE_RESERVED_LO, refcountBlockOffset } from '../format/refcount-table.js';
import {
  ALLOC_BITMAP_AT,
  COMPRESSED_HI,
  COPIED_HI,
  ZERO_BITMAP_AT,
  ZERO_LO,
  compressedAdditionalSectors,
  compressedOffsetHigh,
  compressedSpan,
  entryHostOffset,
  l1ReservedBits,
  l2ReservedBits,
  withCopied,
} from '../format/table-entries.js';
import { readZeroPadded } from '../io/storage.js';
import type { CheckPass } from './check-pass.js';
import { CheckAbort, hex64, hexAlt } from './check-report.js';
import { countPlainDataClusters, type ClusterRun } from './check-scan.js';

/**
 * Counting references (qemu 7.2's calculate_refcounts in block/qcow2-refcount.c, rules re-derived, not copied):
 * one reference for every host cluster each structure and entry uses, into `pass.refs`, with qemu's checks and
 * messages on the way (entry alignment, reserved bits, references past the end of the file, subcluster bitmaps,
 * refcount blocks, snapshot and bitmap tables). The rules:
 *
 * - Counted once per reference: cluster 0 (the header); each L1 table (active and every snapshot's, l1_size * 8
 *   bytes); each L2 table once per L1 entry naming it (an L2 table shared by the active L1 and a snapshot counts
 *   twice); each normal or zero-allocated data cluster (`[offset, offset + cluster_size)`, so a misaligned entry
 *   touches two clusters), except with an external data file; each compressed cluster over its span
 *   (`compressedSpan`: every host cluster its sectors touch); the snapshot table (up to the end of the last entry's
 *   name); the refcount table (all its clusters); every refcount block; and, when the bitmaps autoclear bit is
 *   set, the bitmap directory, each bitmap table and every bitmap data cluster.
 * - A region ending one cluster or more past the end of the file is not counted: it is a corruption.
 * - VM state needs nothing special: it is guest data mapped through the snapshot's own L1 table.
 * - Fragmentation, allocation and compression statistics come from the active L1 only.
 */

interface BitmapsToCount {
  directoryOffset: number;
  directorySize: number;
  nbBitmaps: number;
}

/** Header, active L1, snapshots, snapshot table, refcount table, bitmaps, refcount blocks. */
export async function calculateRefcounts(pass: CheckPass): Promise<void> {
  pass.refcountStructureRefs = [];
  pass.truncatedRegions = [];
  pass.incRefcounts(0, pass.clusterSize);
  await checkL1(pass, pass.header.l1TableOffset, pass.header.l1Size, true, true);
  if (pass.layout.externalDataFile && pass.snapshots.length > 0) {
    pass.message('snapshot', `ERROR ${pass.snapshots.length} snapshots in image with data file`);
    pass.res.corruptions++;
  }
  for (const sn of pass.snapshots) {
    if (sn.l1TableOffset % pass.clusterSize !== 0) {
      pass.message(
        'snapshot',
        `ERROR snapshot ${sn.id} (${sn.name}) l1_offset=${hexAlt(sn.l1TableOffset)}: L1 table is not cluster aligned; snapshot table entry corrupted`,
      );
      pass.res.corruptions++;
      continue;
    }
    if (sn.l1Size > MAX_L1_BYTES / 8) {
      pass.message('snapshot', `ERROR snapshot ${sn.id} (${sn.name}) l1_size=${hexAlt(sn.l1Size)}: L1 table is too large; snapshot table entry corrupted`);
      pass.res.corruptions++;
      continue;
    }
    await checkL1(pass, sn.l1TableOffset, sn.l1Size, false, false);
  }
  pass.incRefcounts(pass.header.snapshotsOffset, pass.snapshotTableSize);
  countRefcountTable(pass);
  await countBitmaps(pass);
  await checkRefblocks(pass);
}

/** The refcount table's clusters, recorded as refcount structure (a rebuild replaces these references). */
export function countRefcountTable(pass: CheckPass): void {
  pass.incRefcounts(pass.header.refcountTableOffset, pass.header.refcountTableClusters * pass.clusterSize, pass.refcountStructureRefs);
}

/** check_refcounts_l1: the L1 table, each L2 table it names, and (checkL2) everything those reach. */
async function checkL1(pass: CheckPass, l1Offset: number, l1Size: number, fragInfo: boolean, active: boolean): Promise<void> {
  if (l1Size === 0) return;
  pass.incRefcounts(l1Offset, l1Size * 8);
  // Entries past the end of the file read as zeros (unused): only the part inside the file is read.
  const l1 = await pass.readInFile(l1Offset, l1Size * 8);
  const view = new DataView(l1.buffer);
  for (let i = 0; i < l1.length / 8; i++) {
    const hi = view.getUint32(i * 8);
    const lo = view.getUint32(i * 8 + 4);
    if (hi === 0 && lo === 0) continue;
    if (l1ReservedBits(hi, lo)) {
      pass.message('reserved-bits', `ERROR found L1 entry with reserved bits set: ${hex64(hi, lo)}`);
      pass.res.corruptions++;
    }
    const l2Offset = entryHostOffset(hi, lo);
    pass.incRefcounts(l2Offset, pass.clusterSize);
    if (l2Offset % pass.clusterSize !== 0) {
      pass.message('misaligned', `ERROR l2_offset=${l2Offset.toString(16)}: Table is not cluster aligned; L1 entry corrupted`);
      pass.res.corruptions++;
    }
    await checkL2(pass, l2Offset, fragInfo, active);
  }
}

/**
 * check_refcounts_l2: every entry of one L2 table — its references counted, its flags, alignment, reserved bits and
 * subcluster bitmaps checked, and the allocation statistics of the active L1 kept (`fragInfo`).
 */
async function checkL2(pass: CheckPass, l2Offset: number, fragInfo: boolean, active: boolean): Promise<void> {
  const { clusterSize, clusterBits, l2Entries, l2EntryBytes, extendedL2, externalDataFile } = pass.layout;
  const table = pass.l2Buffer();
  await readZeroPadded(pass.storage, table, l2Offset);
  const view = new DataView(table.buffer);
  // Fragmentation statistics (active L1 only), shared by the scan and the general path.
  const run: ClusterRun = { next: 0, allocated: 0, fragmented: 0 };
  // Plain data clusters (a 200 GiB image has 3.2 million) are counted by a synchronous scan of the table; the
  // general path below takes the entries it stops at. Standard L2 entries without an external data file only.
  const scan = !extendedL2 && !externalDataFile;
  const countBelow = Math.min(pass.refs.max, 0xfffffffe);
  for (let i = 0; i < l2Entries; i++) {
    if (scan) {
      i = countPlainDataClusters(view, i, l2Entries, clusterBits, pass.fileSize, pass.refs.raw, countBelow, fragInfo ? run : undefined);
      if (i >= l2Entries) break;
    }
    const at = i * l2EntryBytes;
    let hi = view.getUint32(at);
    const lo = view.getUint32(at + 4);
    // Extended L2: the second word's high half is the zero bitmap, its low half the allocation bitmap.
    const zeroBits = extendedL2 ? view.getUint32(at + ZERO_BITMAP_AT) : 0;
    const allocBits = extendedL2 ? view.getUint32(at + ALLOC_BITMAP_AT) : 0;
    const compressed = (hi & COMPRESSED_HI) !== 0;
    const copied = (hi & COPIED_HI) !== 0;
    const offset = entryHostOffset(hi, lo);
    let type: 'compressed' | 'zero-alloc' | 'zero-plain' | 'normal' | 'unallocated';
    if (compressed) type = 'compressed';
    else if ((lo & ZERO_LO) !== 0 && !extendedL2) type = offset !== 0 ? 'zero-alloc' : 'zero-plain';
    else if (offset === 0) type = externalDataFile && copied ? 'normal' : 'unallocated';
    else type = 'normal';

    if (type !== 'compressed' && l2ReservedBits(hi, lo)) {
      pass.message('reserved-bits', `ERROR found l2 entry with reserved bits set: ${hex64(hi, lo)}`);
      pass.res.corruptions++;
    }
    switch (type) {
      case 'compressed': {
        // An offset above 2^53 (hostile) stays exact as a bigint: it is reported, never used.
        const hiOffset = compressedOffsetHigh(hi, clusterBits);
        const coffset: number | bigint = hiOffset > 0x1fffff ? (BigInt(hiOffset) << 32n) | BigInt(lo >>> 0) : hiOffset * 0x100000000 + (lo >>> 0);
        if (copied) {
          pass.message('compressed-cluster', `ERROR: coffset=0x${coffset.toString(16)}: copied flag must never be set for compressed clusters`);
          hi = withCopied(hi, false);
          pass.res.corruptions++;
        }
        if (externalDataFile) {
          pass.message('compressed-cluster', `ERROR compressed cluster ${i} with data file, entry=0x${hex64(hi, lo)}`);
          pass.res.corruptions++;
          break;
        }
        if (zeroBits !== 0 || allocBits !== 0) {
          pass.message('compressed-cluster', `ERROR compressed cluster ${i} with non-zero subcluster allocation bitmap, entry=0x${hex64(hi, lo)}`);
          pass.res.corruptions++;
          break;
        }
        // The span depends on the offset within its sector only: the low half has it even for a bigint offset.
        const csize = compressedSpan(typeof coffset === 'number' ? coffset : lo >>> 0, compressedAdditionalSectors(hi, clusterBits));
        pass.incRefcounts(coffset, csize);
        if (fragInfo) {
          pass.res.allocatedClusters++;
          pass.res.compressedClusters++;
          // Compressed clusters are fragmented by nature (qemu's rule).
          pass.res.fragmentedClusters++;
        }
        break;
      }
      case 'zero-alloc':
      case 'normal': {
        if ((zeroBits & allocBits) !== 0) {
          pass.res.corruptions++;
          pass.message('subcluster-bitmap', `ERROR offset=${offset.toString(16)}: Allocated cluster has corrupted subcluster allocation bitmap`);
        }
        if (offset % clusterSize !== 0) {
          pass.res.corruptions++;
          const containsData = extendedL2 ? allocBits !== 0 : (lo & ZERO_LO) === 0;
          if (!containsData) {
            pass.message(
              'misaligned',
              `${pass.fixErrors ? 'Repairing' : 'ERROR'} offset=${offset.toString(16)}: Preallocated cluster is not properly aligned; L2 entry corrupted.`,
            );
            if (pass.fixErrors && (await pass.repairPreallocatedEntry(l2Offset, i, zeroBits, allocBits, active))) {
              pass.res.corruptions--;
              pass.res.corruptionsFixed++;
              continue;
            }
          } else {
            pass.message('misaligned', `ERROR offset=${offset.toString(16)}: Data cluster is not properly aligned; L2 entry corrupted.`);
          }
        }
        if (fragInfo) {
          run.allocated++;
          if (run.next !== 0 && offset !== run.next) run.fragmented++;
          run.next = offset + clusterSize;
        }
        if (!externalDataFile) pass.incRefcounts(offset, clusterSize);
        break;
      }
      case 'zero-plain':
        break;
      case 'unallocated':
        if (allocBits !== 0) {
          pass.res.corruptions++;
          pass.message('subcluster-bitmap', 'ERROR: Unallocated cluster has non-zero subcluster allocation map');
        }
        break;
    }
  }
  pass.res.allocatedClusters += run.allocated;
  pass.res.fragmentedClusters += run.fragmented;
}

/** Bitmaps are counted only when qemu would load them: v3 with the bitmaps autoclear bit set. */
function bitmapsToCount(pass: CheckPass): BitmapsToCount | undefined {
  if (pass.header.version < 3 || !hasBit(pass.header.autoclearFeatures, AutoclearFeature.Bitmaps)) return undefined;
  const ext = bitmapsExtensionOf(pass.header.extensions);
  if (ext === undefined || ext.nbBitmaps === 0) return undefined;
  return { directoryOffset: ext.bitmapDirectoryOffset, directorySize: ext.bitmapDirectorySize, nbBitmaps: ext.nbBitmaps };
}

/** qcow2_check_bitmaps_refcounts. */
async function countBitmaps(pass: CheckPass): Promise<void> {
  const bitmaps = bitmapsToCount(pass);
  if (bitmaps === undefined) return;
  pass.incRefcounts(bitmaps.directoryOffset, bitmaps.directorySize);
  let entries: BitmapDirectoryEntry[];
  try {
    if (bitmaps.directorySize > 64 * 1024 * 1024) throw new Qcow2Error('BAD_BITMAP_DIRECTORY', 'Requested bitmap directory size is too big');
    const bytes = new Uint8Array(bitmaps.directorySize);
    await readZeroPadded(pass.storage, bytes, bitmaps.directoryOffset);
    entries = decodeBitmapDirectory(bytes, bitmaps.nbBitmaps, {
      checkEntry: (entry) => checkBitmapEntryConstraints(entry, { clusterSize: pass.clusterSize, virtualSize: pass.header.size }),
    });
  } catch (error) {
    if (!(error instanceof Qcow2Error)) throw error;
    pass.message('bitmap', `ERROR ${error.message}`);
    pass.res.corruptions++;
    throw new CheckAbort('Invalid argument');
  }
  for (const entry of entries) {
    pass.incRefcounts(entry.bitmapTableOffset, entry.bitmapTableSize * 8);
    const table = await pass.readInFile(entry.bitmapTableOffset, entry.bitmapTableSize * 8);
    const view = new DataView(table.buffer);
    const offsets: number[] = [];
    for (let i = 0; i < table.length / 8; i++) {
      const hi = view.getUint32(i * 8);
      const lo = view.getUint32(i * 8 + 4);
      const offset = entryHostOffset(hi, lo);
      if (!bitmapTableEntryValid(hi, lo, pass.clusterSize)) {
        // qemu's bitmap_table_load refuses the whole table: the check stops there.
        pass.message('bitmap', `ERROR bitmap '${entry.name}': invalid bitmap table entry ${i}: ${hex64(hi, lo)}`);
        pass.res.corruptions++;
        throw new CheckAbort('Invalid argument');
      }
      if (offset !== 0) offsets.push(offset);
    }
    for (const offset of offsets) pass.incRefcounts(offset, pass.clusterSize);
  }
}

/** check_refblocks: every refcount block is counted, and must be referenced exactly once. */
async function checkRefblocks(pass: CheckPass): Promise<void> {
  const { hi, lo } = pass.stored.table;
  const cs = pass.clusterSize;
  for (let i = 0; i < hi.length; i++) {
    const entryHi = hi[i]!;
    const entryLo = lo[i]!;
    if ((entryLo & REFCOUNT_TABLE_RESERVED_LO) !== 0) {
      pass.message('refcount-block', `ERROR refcount table entry ${i} has reserved bits set`);
      pass.res.corruptions++;
      pass.rebuild = true;
      continue;
    }
    const offset = refcountBlockOffset(entryHi, entryLo);
    if ((entryLo & (cs - 1)) !== 0) {
      pass.message('refcount-block', `ERROR refcount block ${i} is not cluster aligned; refcount table entry corrupted`);
      pass.res.corruptions++;
      pass.rebuild = true;
      continue;
    }
    const cluster = Math.floor(offset / cs);
    if (cluster >= pass.refs.size) {
      pass.res.corruptions++;
      pass.message('refcount-block', `${pass.fixErrors ? 'Repairing' : 'ERROR'} refcount block ${i} is outside image`);
      if (pass.fixErrors) refblockOutsideImage(pass, cluster);
      continue;
    }
    if (offset !== 0) {
      pass.incRefcounts(offset, cs, pass.refcountStructureRefs);
      const count = pass.refs.get(cluster);
      if (count !== 1) {
        pass.message('refcount-block', `ERROR refcount block ${i} refcount=${count}`);
        pass.res.corruptions++;
        pass.rebuild = true;
      }
    }
  }
}

/**
 * A refcount block past the end of the file, in a repair. qemu grows the file to hold it and counts it; the
 * refcounts it holds (zeros) then force a rebuild. A repair here never grows the file for it (the rebuild
 * drops the pointer) but keeps qemu's accounting, so the counts reported are the same.
 */
function refblockOutsideImage(pass: CheckPass, cluster: number): void {
  pass.rebuild = true;
  pass.res.corruptions--;
  pass.res.corruptionsFixed++;
  // Emulated only near the end of the file: qemu would grow the file (sparsely) as far as the pointer says.
  const near = cluster < pass.fileClusters() * 2 + 65536;
  if (near && pass.refs.grow(cluster + 1) && pass.refs.increment(cluster)) pass.refcountStructureRefs.push(cluster);
}
