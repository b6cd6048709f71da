import { Qcow2Error } from '../errors.js';
import { MAX_SNAPSHOTS } from '../format/constants.js';
import { encodeSnapshotTable, SNAPSHOT_EXTRA_DATA_BYTES, type SnapshotEntry } from '../format/snapshot-table.js';
import { viewOf, writeU64 } from '../format/struct.js';
import { COMPRESSED_HI, COPIED_HI, decodeCompressedDescriptor, entryHostOffset } from '../format/table-entries.js';
import { BitmapFlag, decodeBitmapDirectory, hasBitmapFlag, MAX_BITMAP_DIRECTORY_BYTES } from '../format/bitmap-directory.js';
import type { Qcow2Writer } from './image-writer.js';
import type { L1Table } from './mapping.js';
import type { Qcow2Image } from './qcow2-image.js';

/**
 * Internal snapshots: one file holds the saved state and the changes since. A snapshot is a copy of the active
 * L1 table plus one more reference on every L2 table and data cluster it reaches; COPIED flags in the active
 * tables say "refcount is exactly 1, write in place", so they are cleared before a cluster becomes shared and
 * recomputed after one stops being shared.
 *
 * Order, so a crash leaves at worst leaks (or COPIED flags that are merely too cautious):
 * - create: new L1 copy written and counted; COPIED cleared in the active tables; references added; the new
 *   snapshot table written and counted; the header switched to it in one write; the old table freed.
 * - delete: the table without the entry written, header switched; then references dropped, L1 copy freed,
 *   COPIED recomputed.
 * - apply: the snapshot's clusters gain a reference; the active L1 becomes the snapshot's (written in place);
 *   the old active state loses its reference; COPIED recomputed.
 */

const HEADER_SNAPSHOTS = 60; // nb_snapshots u32, then snapshots_offset u64

/**
 * Host clusters reached through an L1 table: runs of consecutive clusters (L2 tables and data clusters, one
 * reference each) and, counted separately because several streams may share a host cluster, the clusters
 * compressed streams touch (one reference per stream per cluster).
 */
interface Reach {
  runs: Array<[start: number, count: number]>;
  compressed: Map<number, number>;
}

async function reachOf(image: Qcow2Image, l1: L1Table): Promise<Reach> {
  const { clusterSize, clusterBits, l2Entries, l2EntryBytes, externalDataFile } = image.layout;
  const runs: Array<[number, number]> = [];
  const compressed = new Map<number, number>();
  const add = (cluster: number): void => {
    const last = runs[runs.length - 1];
    if (last !== undefined && last[0] + last[1] === cluster) last[1]++;
    else runs.push([cluster, 1]);
  };
  for (let i = 0; i < l1.entries; i++) {
    const l2Offset = entryHostOffset(l1.view.getUint32(i * 8), l1.view.getUint32(i * 8 + 4));
    if (l2Offset === 0) continue;
    add(l2Offset / clusterSize);
    const table = viewOf(await image.l2Table(l2Offset));
    for (let j = 0; j < l2Entries; j++) {
      const hi = table.getUint32(j * l2EntryBytes);
      const lo = table.getUint32(j * l2EntryBytes + 4);
      if ((hi & COMPRESSED_HI) !== 0) {
        // Every host cluster the stream's sectors touch is counted once per reference.
        const { hostOffset, additionalSectors } = decodeCompressedDescriptor(hi, lo, clusterBits);
        const start = hostOffset - (hostOffset % 512);
        const first = Math.floor(start / clusterSize);
        const last = Math.floor((start + (additionalSectors + 1) * 512 - 1) / clusterSize);
        for (let c = first; c <= last; c++) compressed.set(c, (compressed.get(c) ?? 0) + 1);
        continue;
      }
      const host = entryHostOffset(hi, lo);
      if (host !== 0 && !externalDataFile) add(host / clusterSize);
    }
  }
  return { runs, compressed };
}

async function adjustReach(writer: Qcow2Writer, reach: Reach, sign: 1 | -1): Promise<void> {
  for (const [start, count] of reach.runs) await writer.refcounts.adjust(start, count, sign);
  for (const [cluster, count] of reach.compressed) await writer.refcounts.adjust(cluster, 1, sign * count);
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

/**
 * Sets COPIED on every active L1 and L2 entry whose cluster has refcount 1 and clears it elsewhere (never on
 * compressed entries). Writes only tables that change.
 */
export async function recomputeCopied(image: Qcow2Image, writer: Qcow2Writer): Promise<void> {
  const { clusterSize, l2Entries, l2EntryBytes, externalDataFile } = image.layout;
  const l1 = image.activeL1;
  for (let i = 0; i < l1.entries; i++) {
    const hi = l1.view.getUint32(i * 8);
    const lo = l1.view.getUint32(i * 8 + 4);
    const l2Offset = entryHostOffset(hi, lo);
    if (l2Offset === 0) continue;
    const l2Copied = (await writer.refcounts.get(l2Offset / clusterSize)) === 1;
    const table = await image.l2Table(l2Offset);
    const view = viewOf(table);
    let changed = false;
    for (let j = 0; j < l2Entries; j++) {
      const entryHi = view.getUint32(j * l2EntryBytes);
      const entryLo = view.getUint32(j * l2EntryBytes + 4);
      if ((entryHi & COMPRESSED_HI) !== 0) continue;
      const host = entryHostOffset(entryHi, entryLo);
      if (host === 0 && !(externalDataFile && (entryHi & COPIED_HI) !== 0)) continue;
      const copied = externalDataFile || (await writer.refcounts.get(host / clusterSize)) === 1;
      const newHi = copied ? (entryHi | COPIED_HI) >>> 0 : (entryHi & ~COPIED_HI) >>> 0;
      if (newHi !== entryHi) {
        view.setUint32(j * l2EntryBytes, newHi);
        changed = true;
      }
    }
    if (changed) {
      image.l2Cache.markDirty(l2Offset);
    }
    const newHi = l2Copied ? (hi | COPIED_HI) >>> 0 : (hi & ~COPIED_HI) >>> 0;
    if (newHi !== hi) {
      l1.view.setUint32(i * 8, newHi);
      await image.storage.write(l1.bytes.subarray(i * 8, i * 8 + 8), image.header.l1TableOffset + i * 8);
    }
  }
  await writer.writeBackMetadata();
}

/** Clears COPIED on every active L1 and L2 entry (before their clusters become shared). */
async function clearCopied(image: Qcow2Image, writer: Qcow2Writer): Promise<void> {
  const { l2Entries, l2EntryBytes } = image.layout;
  const l1 = image.activeL1;
  for (let i = 0; i < l1.entries; i++) {
    const hi = l1.view.getUint32(i * 8);
    const l2Offset = entryHostOffset(hi, l1.view.getUint32(i * 8 + 4));
    if (l2Offset === 0) continue;
    const table = await image.l2Table(l2Offset);
    const view = viewOf(table);
    let changed = false;
    for (let j = 0; j < l2Entries; j++) {
      const entryHi = view.getUint32(j * l2EntryBytes);
      if ((entryHi & COPIED_HI) !== 0) {
        view.setUint32(j * l2EntryBytes, (entryHi & ~COPIED_HI) >>> 0);
        changed = true;
      }
    }
    if (changed) image.l2Cache.markDirty(l2Offset);
    if ((hi & COPIED_HI) !== 0) l1.view.setUint32(i * 8, (hi & ~COPIED_HI) >>> 0);
  }
  // L2 tables first, then the L1 table (whole, it is small) — no pointer changes here, only flags.
  await writer.writeBackMetadata();
  await image.storage.write(l1.bytes, image.header.l1TableOffset);
}

/** Writes `entries` as the new snapshot table at a fresh place, switches the header, frees the old table. */
async function writeSnapshotTable(image: Qcow2Image, writer: Qcow2Writer, entries: SnapshotEntry[]): Promise<void> {
  const { clusterSize } = image.layout;
  const header = image.header;
  const encoded = encodeSnapshotTable(entries);
  let offset = 0;
  if (encoded.length > 0) {
    const clusters = Math.ceil(encoded.length / clusterSize);
    offset = await writer.refcounts.allocate(clusters);
    await writer.refcounts.flush();
    const padded = new Uint8Array(clusters * clusterSize);
    padded.set(encoded);
    await image.storage.write(padded, offset);
    if (offset + padded.length > image.fileSize) image.fileSize = offset + padded.length;
  }
  const fields = new Uint8Array(12);
  const view = viewOf(fields);
  view.setUint32(0, entries.length);
  writeU64(view, 4, offset);
  await image.storage.flush();
  await image.storage.write(fields, HEADER_SNAPSHOTS);
  const oldOffset = header.snapshotsOffset;
  const oldBytes = image.snapshotTableBytes;
  header.nbSnapshots = entries.length;
  header.snapshotsOffset = offset;
  image.replaceSnapshots(entries, encoded.length);
  if (oldOffset !== 0 && oldBytes > 0) await writer.refcounts.free(oldOffset, Math.ceil(oldBytes / clusterSize));
  await writer.refcounts.flush();
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

export interface CreateSnapshotOptions {
  name: string;
  /** Seconds and nanoseconds since the epoch (default: now). */
  date?: { sec: number; nsec: number };
  vmClockNsec?: number;
}

export async function createSnapshot(image: Qcow2Image, writer: Qcow2Writer, options: CreateSnapshotOptions): Promise<SnapshotEntry> {
  refuseUnsupported(image);
  if (image.snapshots.length >= MAX_SNAPSHOTS) throw new Qcow2Error('TOO_MANY_SNAPSHOTS', 'too many snapshots', { file: image.name });
  await writer.writeBackMetadata();
  const { clusterSize } = image.layout;
  const active = image.activeL1;
  const reach = await reachOf(image, active);
  const l1Clusters = Math.max(1, Math.ceil(active.bytes.length / clusterSize));
  // Refuse before writing anything: the file stays byte for byte as it was (qemu-img leaks a cluster here).
  await checkHeadroom(writer, reach, image);

  const l1Offset = await writer.refcounts.allocate(l1Clusters);
  const copy = new Uint8Array(l1Clusters * clusterSize);
  copy.set(active.bytes);
  // Snapshot L1 entries carry no COPIED flags.
  const copyView = viewOf(copy);
  for (let i = 0; i < active.entries; i++) copyView.setUint32(i * 8, (copyView.getUint32(i * 8) & ~COPIED_HI) >>> 0);
  await writer.refcounts.flush();
  await image.storage.write(copy, l1Offset);
  if (l1Offset + copy.length > image.fileSize) image.fileSize = l1Offset + copy.length;

  await clearCopied(image, writer);
  await adjustReach(writer, reach, 1);
  await writer.refcounts.flush();

  const now = Date.now();
  const date = options.date ?? { sec: Math.floor(now / 1000), nsec: (now % 1000) * 1_000_000 };
  const extraData = new Uint8Array(SNAPSHOT_EXTRA_DATA_BYTES);
  const entry: SnapshotEntry = {
    l1TableOffset: l1Offset,
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
  await writeSnapshotTable(image, writer, [...image.snapshots, entry]);
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
  await writer.writeBackMetadata();
  const l1 = await image.snapshotL1(entry);
  const reach = await reachOf(image, l1);
  await writeSnapshotTable(
    image,
    writer,
    image.snapshots.filter((s) => s !== entry),
  );
  await adjustReach(writer, reach, -1);
  const l1Clusters = Math.ceil((entry.l1Size * 8) / image.layout.clusterSize);
  if (l1Clusters > 0) await writer.refcounts.free(entry.l1TableOffset, l1Clusters);
  await writer.refcounts.flush();
  await recomputeCopied(image, writer);
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
  await writer.writeBackMetadata();
  const snapshotL1 = await image.snapshotL1(entry);
  const gained = await reachOf(image, snapshotL1);
  await checkHeadroom(writer, gained, image);
  const diskSize = entry.diskSize ?? image.virtualSize;
  // The active L1 must hold the snapshot's entries: grow it (and set the size) first when needed.
  if (entry.l1Size > image.activeL1.entries || diskSize !== image.virtualSize) await writer.resizeForSnapshot(diskSize, entry.l1Size);
  const lost = await reachOf(image, image.activeL1);
  await adjustReach(writer, gained, 1);
  await writer.refcounts.flush();
  const active = image.activeL1;
  const bytes = new Uint8Array(active.bytes.length);
  bytes.set(snapshotL1.bytes.subarray(0, Math.min(snapshotL1.bytes.length, bytes.length)));
  active.bytes.set(bytes);
  await image.storage.write(active.bytes, image.header.l1TableOffset);
  image.l2Cache.clear();
  image.invalidateCompressedCache();
  await adjustReach(writer, lost, -1);
  await writer.refcounts.flush();
  await recomputeCopied(image, writer);
  return entry;
}


