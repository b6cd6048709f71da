import { Qcow2Error } from '../errors.js';
import { MAX_SNAPSHOTS } from '../format/constants.js';
import { encodeSnapshotTable, SNAPSHOT_EXTRA_DATA_BYTES, type SnapshotEntry } from '../format/snapshot-table.js';
import { viewOf } from '../format/struct.js';
import {
  COMPRESSED_HI,
  COPIED_HI,
  HOST_OFFSET_HI_MASK,
  HOST_OFFSET_LO_MASK,
  compressedHostClusters,
  decodeCompressedDescriptor,
  encodeHostOffset,
  entryHostOffset,
  setTableEntry,
  withCopied,
} from '../format/table-entries.js';
import { BitmapFlag, decodeBitmapDirectory, hasBitmapFlag, MAX_BITMAP_DIRECTORY_BYTES } from '../format/bitmap-directory.js';
import type { Qcow2Writer } from './image-writer.js';
import type { L1Table } from './mapping.js';
import { WRITE_CHUNK } from '../io/write-size.js';
import { MetadataSwitch } from './metadata-switch.js';
import type { Qcow2Image } from './qcow2-image.js';

/**
 * Internal snapshots: one file holds the saved state and the changes since. A snapshot is an L1 table of its
 * own plus one more reference on every cluster it reaches; COPIED flags in the active tables say "refcount is
 * exactly 1, write in place".
 *
 * Over 400 lines on purpose: create, delete and apply are three uses of one set of helpers (the reach of an L1
 * table, COPIED recomputation, the new snapshot table) whose order rules are stated once, here.
 *
 * CRASH SAFETY. Create, delete and apply change refcounts and COPIED flags together, and no order of in-place
 * writes keeps them agreeing at every step (qemu-img check reports either disagreement as a corruption). So all
 * three are metadata switches (metadata-switch.ts): nothing in use is written; new refcount blocks and table,
 * new copies of the active L2 tables that change, a new active L1 and a new snapshot table go to free clusters;
 * one header write switches to them. A kill at any point leaves the old image or the new one, both clean.
 *
 * - create: the active L1 table, as it is, becomes the snapshot's (with the L2 tables it points at). The active
 *   side gets copies of those L2 tables (their data clusters now shared: COPIED clear) and a new L1 pointing at
 *   the copies (each copy has refcount 1: COPIED set). Data clusters gain one reference.
 * - delete: the snapshot's L1, L2 tables and data lose one reference; active L2 tables whose COPIED flags no
 *   longer agree with the new refcounts are replaced by corrected copies, and the active L1 by a corrected copy.
 * - apply: the old active L1, its L2 tables and data lose one reference; the new active side is copies of the
 *   snapshot's L2 tables and a new L1, as in create; the disk takes the snapshot's size.
 * Unlike qemu, the active side never shares L2 tables with a snapshot (a later write would copy them anyway).
 */

const MAX_WRITE = WRITE_CHUNK;

/**
 * What an L1 table reaches: its L2 tables (one reference each, by L1 entry), the runs of consecutive data
 * clusters its L2 entries point at (one reference each) and, counted separately because several streams may
 * share a host cluster, the clusters compressed streams touch (one reference per stream per cluster).
 */
interface Reach {
  tables: number[];
  runs: Array<[start: number, count: number]>;
  compressed: Map<number, number>;
}

/** Metadata written back and the file's real size known (the writer's data writes do not track it). */
async function settle(image: Qcow2Image, writer: Qcow2Writer): Promise<void> {
  await writer.writeBackMetadata();
  image.fileReaches(await image.storage.size());
}

function corruptEntry(image: Qcow2Image, what: string): Qcow2Error {
  return new Qcow2Error('BAD_L2_ENTRY', what, { file: image.name });
}

/**
 * Appends to `runs` the data clusters of standard entries [from, entries) of an L2 table, merging consecutive
 * ones, and returns the first entry that needs a closer look (compressed, misaligned, past `fileClusters`).
 */
function collectDataRuns(table: DataView, from: number, entries: number, entryBytes: number, clusterBits: number, fileClusters: number, runs: Array<[number, number]>): number {
  const clustersPer4G = 2 ** (32 - clusterBits);
  const misaligned = (2 ** clusterBits - 1) & HOST_OFFSET_LO_MASK;
  let last = runs[runs.length - 1];
  for (let j = from; j < entries; j++) {
    const hi = table.getUint32(j * entryBytes);
    const lo = table.getUint32(j * entryBytes + 4);
    if ((hi & COMPRESSED_HI) !== 0 || (lo & misaligned) !== 0) return j;
    const cluster = (hi & HOST_OFFSET_HI_MASK) * clustersPer4G + (lo >>> clusterBits);
    if (cluster === 0) continue;
    if (cluster >= fileClusters) return j;
    if (last !== undefined && last[0] + last[1] === cluster) last[1]++;
    else runs.push((last = [cluster, 1]));
  }
  return entries;
}

async function reachOf(image: Qcow2Image, l1: L1Table): Promise<Reach> {
  const { clusterSize, clusterBits, l2Entries, l2EntryBytes, externalDataFile } = image.layout;
  const fileClusters = Math.ceil(image.fileSize / clusterSize);
  const reach: Reach = { tables: [], runs: [], compressed: new Map() };
  const add = (cluster: number): void => {
    if (cluster >= fileClusters) throw corruptEntry(image, `cluster at 0x${(cluster * clusterSize).toString(16)} lies past the end of the file`);
    const last = reach.runs[reach.runs.length - 1];
    if (last !== undefined && last[0] + last[1] === cluster) last[1]++;
    else reach.runs.push([cluster, 1]);
  };
  for (let i = 0; i < l1.entries; i++) {
    const l2Offset = entryHostOffset(l1.view.getUint32(i * 8), l1.view.getUint32(i * 8 + 4));
    if (l2Offset === 0) continue;
    if (l2Offset % clusterSize !== 0) throw corruptEntry(image, `L2 table offset 0x${l2Offset.toString(16)} is not cluster aligned`);
    reach.tables.push(l2Offset / clusterSize);
    const table = viewOf(await image.l2Table(l2Offset));
    for (let j = 0; j < l2Entries; j++) {
      // Plain data entries in one synchronous scan; the loop below takes the entries it stops at.
      if (!externalDataFile) {
        j = collectDataRuns(table, j, l2Entries, l2EntryBytes, clusterBits, fileClusters, reach.runs);
        if (j >= l2Entries) break;
      }
      const hi = table.getUint32(j * l2EntryBytes);
      const lo = table.getUint32(j * l2EntryBytes + 4);
      if ((hi & COMPRESSED_HI) !== 0) {
        // Every host cluster the stream's sectors touch is counted once per reference.
        const { hostOffset, additionalSectors } = decodeCompressedDescriptor(hi, lo, clusterBits);
        const { first, count } = compressedHostClusters(hostOffset, additionalSectors, clusterSize);
        if (first + count > fileClusters) throw corruptEntry(image, `compressed cluster at 0x${hostOffset.toString(16)} lies past the end of the file`);
        for (let c = first; c < first + count; c++) reach.compressed.set(c, (reach.compressed.get(c) ?? 0) + 1);
        continue;
      }
      const host = entryHostOffset(hi, lo);
      if (host % clusterSize !== 0) throw corruptEntry(image, `cluster offset 0x${host.toString(16)} is not cluster aligned`);
      if (host !== 0 && !externalDataFile) add(host / clusterSize);
    }
  }
  return reach;
}

/** Moves the new refcounts of what `reach` reaches by `sign`: the L2 tables too unless `dataOnly`. */
async function adjustReach(sw: MetadataSwitch, reach: Reach, sign: 1 | -1, dataOnly = false): Promise<void> {
  if (!dataOnly) for (const table of reach.tables) await sw.adjust(table, 1, sign);
  for (const [start, count] of reach.runs) await sw.adjust(start, count, sign);
  for (const [cluster, count] of reach.compressed) await sw.adjust(cluster, 1, sign * count);
}

/** Refuses (before anything is written) a reference increase some refcount cannot hold (1-bit refcounts…). */
async function checkHeadroom(writer: Qcow2Writer, reach: Reach, image: Qcow2Image): Promise<void> {
  const refuse = (cluster: number): never => {
    throw new Qcow2Error(
      'BAD_ARGUMENT',
      `refcount of cluster ${cluster} would overflow ${image.layout.refcountBits}-bit refcounts; convert to a wider refcount_bits first`,
      { file: image.name },
    );
  };
  for (const [start, count] of reach.runs) {
    if ((await writer.refcounts.maxInRange(start, count)) + 1 > writer.refcounts.max) refuse(start);
  }
  for (const [cluster, count] of reach.compressed) {
    if ((await writer.refcounts.get(cluster)) + count > writer.refcounts.max) refuse(cluster);
  }
}

function l1Clusters(image: Qcow2Image, entries: number): number {
  return Math.ceil((entries * 8) / image.layout.clusterSize);
}

/** Writes `bytes` (whole clusters' worth, padded) into new clusters of the switch; returns their offset. */
async function writeNew(sw: MetadataSwitch, image: Qcow2Image, bytes: Uint8Array): Promise<number> {
  const clusters = Math.max(1, Math.ceil(bytes.length / image.layout.clusterSize));
  const offset = await sw.allocate(clusters);
  const padded = new Uint8Array(clusters * image.layout.clusterSize);
  padded.set(bytes);
  await sw.write(padded, offset);
  return offset;
}

/** Clears COPIED in the L2 entries of bytes [from, to) of `table`. */
function clearCopiedFlags(table: DataView, from: number, to: number, entryBytes: number): void {
  for (let at = from; at < to; at += entryBytes) table.setUint32(at, withCopied(table.getUint32(at), false));
}

/**
 * A new active L1 of `entries` entries whose L2 tables are fresh copies of the ones `source` points at, every
 * data entry's COPIED clear (the caller gave each data cluster one more reference, so none has refcount 1) and
 * every L1 entry's COPIED set (a copy has refcount 1). The copies are written as one run of clusters.
 */
async function activeCopiesOf(image: Qcow2Image, sw: MetadataSwitch, source: L1Table, entries: number): Promise<Uint8Array> {
  const { clusterSize, l2EntryBytes } = image.layout;
  const l1 = new Uint8Array(entries * 8);
  const l1View = viewOf(l1);
  const indexes: number[] = [];
  for (let i = 0; i < Math.min(entries, source.entries); i++) {
    if (entryHostOffset(source.view.getUint32(i * 8), source.view.getUint32(i * 8 + 4)) !== 0) indexes.push(i);
  }
  if (indexes.length === 0) return l1;
  const run = await sw.allocate(indexes.length);
  const perChunk = Math.max(1, Math.floor(MAX_WRITE / clusterSize));
  for (let first = 0; first < indexes.length; first += perChunk) {
    const chunkIndexes = indexes.slice(first, first + perChunk);
    const chunk = new Uint8Array(chunkIndexes.length * clusterSize);
    const view = viewOf(chunk);
    for (const [k, i] of chunkIndexes.entries()) {
      const l2Offset = entryHostOffset(source.view.getUint32(i * 8), source.view.getUint32(i * 8 + 4));
      chunk.set(await image.l2Table(l2Offset), k * clusterSize);
      clearCopiedFlags(view, k * clusterSize, (k + 1) * clusterSize, l2EntryBytes);
      const copy = run + (first + k) * clusterSize;
      setTableEntry(l1View, i * 8, copy, true);
    }
    await sw.write(chunk, run + first * clusterSize);
  }
  return l1;
}

/**
 * The active L1 with every COPIED flag agreeing with the switch's new refcounts: an L2 table with a flag to
 * change is replaced by a corrected copy (the table loses the active reference, the copy has it; its data
 * clusters keep their counts), and an L1 flag to change makes a new L1. Returns the L1 to switch to, and
 * whether it differs from the current one.
 */
async function activeWithCopiedRecomputed(image: Qcow2Image, sw: MetadataSwitch): Promise<{ l1: Uint8Array; changed: boolean }> {
  const { clusterSize, l2Entries, l2EntryBytes, externalDataFile } = image.layout;
  const active = image.activeL1;
  const l1 = active.bytes.slice();
  const l1View = viewOf(l1);
  let changed = false;
  for (let i = 0; i < active.entries; i++) {
    const hi = l1View.getUint32(i * 8);
    const l2Offset = entryHostOffset(hi, l1View.getUint32(i * 8 + 4));
    if (l2Offset === 0) continue;
    const table = await image.l2Table(l2Offset);
    const view = viewOf(table);
    // The corrected copy, made at the first flag to change (no garbage per entry).
    let fixed: DataView | undefined;
    for (let j = 0; j < l2Entries; j++) {
      const at = j * l2EntryBytes;
      const entryHi = view.getUint32(at);
      if ((entryHi & COMPRESSED_HI) !== 0) continue;
      const host = entryHostOffset(entryHi, view.getUint32(at + 4));
      if (host === 0 && !(externalDataFile && (entryHi & COPIED_HI) !== 0)) continue;
      // Synchronous in the common case: only a refcount block not yet in memory is waited for.
      let refcount = externalDataFile ? 1 : sw.peek(host / clusterSize);
      if (refcount === undefined) {
        await sw.load(host / clusterSize);
        refcount = sw.peek(host / clusterSize)!;
      }
      const copied = externalDataFile || refcount === 1;
      const newHi = withCopied(entryHi, copied);
      if (newHi !== entryHi) {
        fixed ??= viewOf(table.slice());
        fixed.setUint32(at, newHi);
      }
    }
    let target = l2Offset;
    if (fixed !== undefined) {
      target = await writeNew(sw, image, new Uint8Array(fixed.buffer, fixed.byteOffset, fixed.byteLength));
      await sw.free(l2Offset, 1);
    }
    const copied = (await sw.get(target / clusterSize)) === 1;
    if (withCopied(encodeHostOffset(target).hi, copied) !== hi || target !== l2Offset) {
      setTableEntry(l1View, i * 8, target, copied);
      changed = true;
    }
  }
  return { l1, changed };
}

/** Writes `entries` as a new snapshot table in the switch and frees the old one there. */
async function newSnapshotTable(image: Qcow2Image, sw: MetadataSwitch, entries: SnapshotEntry[]): Promise<{ entries: SnapshotEntry[]; offset: number; tableBytes: number }> {
  const encoded = encodeSnapshotTable(entries);
  const offset = encoded.length > 0 ? await writeNew(sw, image, encoded) : 0;
  const oldBytes = image.snapshotTableBytes;
  if (image.header.snapshotsOffset !== 0 && oldBytes > 0) await sw.free(image.header.snapshotsOffset, Math.ceil(oldBytes / image.layout.clusterSize));
  return { entries, offset, tableBytes: encoded.length };
}

/**
 * Sets COPIED on every active L1 and L2 entry whose cluster has refcount 1 and clears it elsewhere (never on
 * compressed entries), as a metadata switch: corrected copies, one header write.
 */
export async function recomputeCopied(image: Qcow2Image, writer: Qcow2Writer): Promise<void> {
  await settle(image, writer);
  const sw = new MetadataSwitch(image, writer.refcounts);
  const { l1, changed } = await activeWithCopiedRecomputed(image, sw);
  if (!changed) return;
  const l1TableOffset = await writeNew(sw, image, l1);
  await sw.free(image.header.l1TableOffset, l1Clusters(image, image.activeL1.entries));
  await sw.commit({ size: image.virtualSize, l1, l1TableOffset });
}

function refuseUnsupported(image: Qcow2Image): void {
  if (image.layout.externalDataFile) {
    throw new Qcow2Error('BAD_ARGUMENT', 'internal snapshots are not supported with an external data file', { file: image.name });
  }
}

/** qemu's next id: one more than the largest numeric id in the table. */
function nextSnapshotId(entries: readonly SnapshotEntry[]): string {
  let max = 0;
  for (const entry of entries) {
    const n = Number.parseInt(entry.id, 10);
    if (Number.isFinite(n) && n > max) max = n;
  }
  return String(max + 1);
}

/** A new internal snapshot's name, date and VM clock. */
export interface CreateSnapshotOptions {
  name: string;
  /** Seconds and nanoseconds since the epoch (default: now). */
  date?: { sec: number; nsec: number };
  vmClockNsec?: number;
}

export async function createSnapshot(image: Qcow2Image, writer: Qcow2Writer, options: CreateSnapshotOptions): Promise<SnapshotEntry> {
  refuseUnsupported(image);
  if (image.snapshots.length >= MAX_SNAPSHOTS) throw new Qcow2Error('TOO_MANY_SNAPSHOTS', 'too many snapshots', { file: image.name });
  await settle(image, writer);
  const active = image.activeL1;
  const reach = await reachOf(image, active);
  // Refuse before writing anything: the file stays byte for byte as it was (qemu-img leaks a cluster here).
  await checkHeadroom(writer, reach, image);

  const sw = new MetadataSwitch(image, writer.refcounts);
  let snapshotL1Offset = image.header.l1TableOffset;
  let l1 = active.bytes;
  let l1TableOffset = image.header.l1TableOffset;
  if (active.entries === 0) {
    // Nothing to hand over: the snapshot gets an empty L1 cluster of its own, as qemu's does.
    snapshotL1Offset = await writeNew(sw, image, new Uint8Array(0));
  } else {
    // The active L1 (and its L2 tables) becomes the snapshot's; the active side gets copies.
    await adjustReach(sw, reach, 1, true);
    l1 = await activeCopiesOf(image, sw, active, active.entries);
    l1TableOffset = await writeNew(sw, image, l1);
  }

  const now = Date.now();
  const date = options.date ?? { sec: Math.floor(now / 1000), nsec: (now % 1000) * 1_000_000 };
  const extraData = new Uint8Array(SNAPSHOT_EXTRA_DATA_BYTES);
  const entry: SnapshotEntry = {
    l1TableOffset: snapshotL1Offset,
    l1Size: active.entries,
    id: nextSnapshotId(image.snapshots),
    name: options.name,
    dateSec: date.sec,
    dateNsec: date.nsec,
    vmClockNsec: options.vmClockNsec ?? 0,
    vmStateSize: 0,
    vmStateSize32: 0,
    diskSize: image.virtualSize,
    // qemu-img snapshot -c records icount 0.
    icount: 0n,
    extraData,
  };
  const snapshots = await newSnapshotTable(image, sw, [...image.snapshots, entry]);
  await sw.commit({ size: image.virtualSize, l1, l1TableOffset, snapshots });
  return entry;
}

function findForAction(image: Qcow2Image, idOrName: string, what: string): SnapshotEntry {
  const entry = image.findSnapshot(idOrName);
  if (entry === undefined) throw new Qcow2Error('SNAPSHOT_NOT_FOUND', `${what}: snapshot '${idOrName}' not found`, { file: image.name });
  return entry;
}

export async function deleteSnapshot(image: Qcow2Image, writer: Qcow2Writer, idOrName: string): Promise<SnapshotEntry> {
  refuseUnsupported(image);
  const entry = findForAction(image, idOrName, 'delete');
  await settle(image, writer);
  const reach = await reachOf(image, await image.snapshotL1(entry));
  const sw = new MetadataSwitch(image, writer.refcounts);
  await adjustReach(sw, reach, -1);
  if (entry.l1Size > 0) await sw.free(entry.l1TableOffset, l1Clusters(image, entry.l1Size));
  let { l1, changed } = await activeWithCopiedRecomputed(image, sw);
  let l1TableOffset = image.header.l1TableOffset;
  if (changed) {
    l1TableOffset = await writeNew(sw, image, l1);
    await sw.free(image.header.l1TableOffset, l1Clusters(image, image.activeL1.entries));
  } else {
    l1 = image.activeL1.bytes;
  }
  const snapshots = await newSnapshotTable(
    image,
    sw,
    image.snapshots.filter((s) => s !== entry),
  );
  await sw.commit({ size: image.virtualSize, l1, l1TableOffset, snapshots });
  return entry;
}

/**
 * Enabled persistent bitmaps track every guest write; reverting the disk under them would make them lie, so
 * qemu refuses to apply a snapshot while any is enabled, and so does this engine.
 */
async function refuseActiveBitmaps(image: Qcow2Image): Promise<void> {
  const extension = image.bitmapsExtension;
  if (extension === undefined || !image.bitmapsConsistent || extension.nbBitmaps === 0) return;
  const size = extension.bitmapDirectorySize;
  if (size > MAX_BITMAP_DIRECTORY_BYTES || extension.bitmapDirectoryOffset + size > image.fileSize) {
    throw new Qcow2Error('BAD_BITMAP_DIRECTORY', 'bitmap directory lies outside the file', { file: image.name });
  }
  const bytes = new Uint8Array(size);
  await image.storage.read(bytes, extension.bitmapDirectoryOffset);
  const entries = decodeBitmapDirectory(bytes, extension.nbBitmaps);
  if (entries.some((entry) => hasBitmapFlag(entry.flags, BitmapFlag.Auto))) {
    throw new Qcow2Error('BAD_ARGUMENT', 'Device has active dirty bitmaps', { file: image.name });
  }
}

export async function applySnapshot(image: Qcow2Image, writer: Qcow2Writer, idOrName: string): Promise<SnapshotEntry> {
  refuseUnsupported(image);
  const entry = findForAction(image, idOrName, 'apply');
  await refuseActiveBitmaps(image);
  await settle(image, writer);
  const snapshotL1 = await image.snapshotL1(entry);
  const gained = await reachOf(image, snapshotL1);
  await checkHeadroom(writer, gained, image);
  const lost = await reachOf(image, image.activeL1);
  const diskSize = entry.diskSize ?? image.virtualSize;
  // The active L1 keeps its length (qemu never shrinks it) and holds the snapshot's entries and size.
  const entries = Math.max(image.activeL1.entries, entry.l1Size, Math.ceil(diskSize / image.layout.l2Coverage));

  const sw = new MetadataSwitch(image, writer.refcounts);
  await adjustReach(sw, gained, 1, true);
  await adjustReach(sw, lost, -1);
  if (image.activeL1.entries > 0) await sw.free(image.header.l1TableOffset, l1Clusters(image, image.activeL1.entries));
  const l1 = await activeCopiesOf(image, sw, snapshotL1, entries);
  const l1TableOffset = entries > 0 ? await writeNew(sw, image, l1) : 0;
  await sw.commit({ size: diskSize, l1, l1TableOffset });
  return entry;
}
