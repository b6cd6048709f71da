import { Qcow2Error } from '../errors.js';
import { AutoclearFeature, CompatibleFeature, CompressionType, HeaderExtensionType, IncompatibleFeature, V3_HEADER_LENGTH } from '../format/constants.js';
import { QEMU_FEATURE_NAMES, encodeFeatureNameTable, encodeStringExtension } from '../format/header-extensions.js';
import { encodeHeader, setBit } from '../format/header.js';
import { SNAPSHOT_EXTRA_DATA_BYTES, encodeSnapshotTable, type SnapshotEntry } from '../format/snapshot-table.js';
import { viewOf } from '../format/struct.js';
import { COMPRESSED_HI, entryHostOffset } from '../format/table-entries.js';
import { bitmapClusters, loadBitmapState } from './bitmaps.js';
import { rewriteHeader, withExtension, writeHeaderFields } from './header-rewrite.js';
import type { Qcow2Writer } from './image-writer.js';
import { MetadataSwitch } from './metadata-switch.js';
import type { Qcow2Image } from './qcow2-image.js';
import { changeRefcountOrder, planRefcountOrder, type RefcountOrderPlan } from './refcount-order.js';
import { recomputeCopied } from './snapshots.js';
import { expandZeroClusters } from './zero-expansion.js';

/** qemu-img amend -o for qcow2: the options as given (qemu's names in comments). */
export interface AmendOptions {
  /** compat: "0.10"/"v2" or "1.1"/"v3". */
  compat?: string;
  /** refcount_bits. */
  refcountBits?: number;
  /** lazy_refcounts. */
  lazyRefcounts?: boolean;
  /** size: the new virtual size. */
  size?: number;
  /** backing_file, backing_fmt: only accepted when equal to what the image has (qemu: use rebase). */
  backingFile?: string;
  backingFormat?: string;
  /** data_file: a new name for the external data file. */
  dataFile?: string;
  /** data_file_raw: can only be cleared on an existing image. */
  dataFileRaw?: boolean;
  /** Some encrypt.* option was given. */
  encrypt?: boolean;
}

/**
 * What amend needs of an image open for writing: the engine's image and writer, a resize that reads through the
 * backing chain (the device layer's), and close. A Qcow2Device is one; the engine does not import the device layer.
 */
export interface AmendTarget {
  readonly filename: string;
  readonly image: Qcow2Image;
  readonly attachedWriter: Qcow2Writer | undefined;
  resize(newSize: number): Promise<void>;
  close(): Promise<void>;
}

/** What amend will do, decided (and refused) before anything is written. */
interface AmendPlan {
  oldVersion: 2 | 3;
  newVersion: 2 | 3;
  refcountOrder?: RefcountOrderPlan;
  newRefcountBits: number;
  lazyRefcounts: boolean;
  dataFileRaw: boolean;
}

function refuse(image: Qcow2Image, message: string): never {
  throw new Qcow2Error('BAD_ARGUMENT', message, { file: image.name });
}

const V3_HINT = ' (use compat=1.1 or greater)';

/**
 * Checks every option against the image as qemu's qcow2_amend_options and qcow2_downgrade do, with their
 * messages, in the order qemu would meet them. Unlike qemu (which refuses some only after it has written
 * others), nothing is written until all pass.
 */
async function planAmend(device: AmendTarget, options: AmendOptions): Promise<AmendPlan> {
  const image = device.image;
  const header = image.header;
  const oldVersion = header.version;
  let newVersion = oldVersion;
  if (options.compat !== undefined) {
    if (options.compat === '0.10' || options.compat === 'v2') newVersion = 2;
    else if (options.compat === '1.1' || options.compat === 'v3') newVersion = 3;
    else refuse(image, `Unknown compatibility level ${options.compat}`);
  }
  if (options.dataFile !== undefined && !image.layout.externalDataFile) refuse(image, 'data-file can only be set for images that use an external data file');
  const dataFileRaw = options.dataFileRaw ?? image.dataFileRaw;
  if (options.dataFileRaw === true && !image.dataFileRaw) refuse(image, 'data-file-raw cannot be set on existing images');
  const newRefcountBits = options.refcountBits ?? image.layout.refcountBits;
  if (!Number.isInteger(Math.log2(newRefcountBits)) || newRefcountBits < 1 || newRefcountBits > 64) {
    refuse(image, 'Refcount width must be a power of two and may not exceed 64 bits');
  }
  if (options.encrypt) refuse(image, "Can't amend encryption options - encryption not present");

  let refcountOrder: RefcountOrderPlan | undefined;
  if (newRefcountBits !== image.layout.refcountBits) {
    if (newVersion < 3 && newRefcountBits !== 16) refuse(image, `Refcount widths other than 16 bits require compatibility level 1.1 or above${V3_HINT}`);
    refcountOrder = await planRefcountOrder(image, newRefcountBits);
  }
  const changesBacking =
    (options.backingFile !== undefined && options.backingFile !== (header.backingFile ?? '')) ||
    (options.backingFormat !== undefined && options.backingFormat !== (image.backingFormat ?? ''));
  if (changesBacking) refuse(image, "Cannot amend the backing file\nYou can use 'qemu-img rebase' instead.");
  const lazyRefcounts = options.lazyRefcounts ?? image.lazyRefcounts;
  if (lazyRefcounts && !image.lazyRefcounts && newVersion < 3) refuse(image, `Lazy refcounts only supported with compatibility level 1.1 and above${V3_HINT}`);
  if (options.size !== undefined && options.size % 512 !== 0) refuse(image, 'The new size must be a multiple of 512');

  if (newVersion < oldVersion) {
    if (newRefcountBits !== 16) refuse(image, 'compat=0.10 requires refcount_bits=16');
    if (image.layout.externalDataFile) refuse(image, 'Cannot downgrade an image with a data file');
    const size = options.size ?? image.virtualSize;
    if (image.snapshots.some((s) => s.vmStateSize > 0xffffffff || (s.diskSize ?? size) !== size)) refuse(image, 'Internal snapshots prevent downgrade of image');
    const incompatible = header.incompatibleFeatures & ~(1n << BigInt(IncompatibleFeature.CompressionType)) & ~(1n << BigInt(IncompatibleFeature.Dirty));
    if (incompatible !== 0n) refuse(image, `Cannot downgrade an image with incompatible features 0x${incompatible.toString(16)} set`);
    if (image.layout.compressionType !== CompressionType.Zlib && (await hasCompressedClusters(image))) {
      refuse(image, 'Cannot downgrade an image with zstd compression type and existing compressed clusters');
    }
  }
  return { oldVersion, newVersion, ...(refcountOrder === undefined ? {} : { refcountOrder }), newRefcountBits, lazyRefcounts, dataFileRaw };
}

/** Whether any L1 (the active one or a snapshot's; qemu looks at the active one only) maps a compressed cluster. */
async function hasCompressedClusters(image: Qcow2Image): Promise<boolean> {
  const l1s = [image.activeL1];
  for (const snapshot of image.snapshots) l1s.push(await image.snapshotL1(snapshot));
  const { l2Entries, l2EntryBytes } = image.layout;
  for (const l1 of l1s) {
    for (let i = 0; i < l1.entries; i++) {
      const l2Offset = entryHostOffset(l1.view.getUint32(i * 8), l1.view.getUint32(i * 8 + 4));
      if (l2Offset === 0) continue;
      const view = viewOf(await image.l2Table(l2Offset));
      for (let j = 0; j < l2Entries; j++) if ((view.getUint32(j * l2EntryBytes) & COMPRESSED_HI) !== 0) return true;
    }
  }
  return false;
}

function writerOf(device: AmendTarget): Qcow2Writer {
  const writer = device.attachedWriter;
  if (writer === undefined) throw new Qcow2Error('READ_ONLY', 'amend needs the image open for writing', { file: device.filename });
  return writer;
}

export interface AmendRunOptions {
  onProgress?: (done: number, total: number) => void;
}

/**
 * qemu-img amend for qcow2. Refusals come first (planAmend); then the changes in qemu's order: upgrade,
 * refcount width, data file options, lazy refcounts, size, downgrade. Each is crash-safe on its own (a switch
 * or a single header write, see the functions it calls), and the image is reopened between them, so a kill
 * leaves an image some prefix of the steps made — never a corrupt one.
 *
 * `reopen` opens the image for writing (with its backing chain: a size change reads it).
 */
export async function amendImage(reopen: () => Promise<AmendTarget>, options: AmendOptions, run: AmendRunOptions = {}): Promise<void> {
  let device = await reopen();
  let plan: AmendPlan;
  try {
    plan = await planAmend(device, options);
  } finally {
    await device.close();
  }
  const steps: Array<(device: AmendTarget, progress: (done: number, total: number) => void) => Promise<void>> = [];
  if (plan.newVersion > plan.oldVersion) steps.push((d) => upgrade(d.image, writerOf(d)));
  if (plan.refcountOrder !== undefined) {
    const order = plan.refcountOrder;
    // The plan read the refcounts of the image as it was; an upgrade does not move them.
    steps.push(async (d, progress) => changeRefcountOrder(d.image, await planRefcountOrder(d.image, order.newBits), progress));
  }
  if (options.dataFile !== undefined || plan.dataFileRaw !== device.image.dataFileRaw) steps.push((d) => setDataFileOptions(d.image, options.dataFile, plan.dataFileRaw));
  if (plan.lazyRefcounts !== device.image.lazyRefcounts) steps.push((d) => setLazyRefcounts(d.image, plan.lazyRefcounts));
  if (options.size !== undefined) steps.push((d) => d.resize(options.size!));
  if (plan.newVersion < plan.oldVersion) steps.push((d, progress) => downgrade(d, progress));

  run.onProgress?.(0, steps.length * 100);
  for (let i = 0; i < steps.length; i++) {
    device = await reopen();
    try {
      await steps[i]!(device, (done, total) => run.onProgress?.(i * 100 + Math.floor((done / Math.max(1, total)) * 100), steps.length * 100));
    } finally {
      await device.close();
    }
    run.onProgress?.((i + 1) * 100, steps.length * 100);
  }
}

/**
 * compat=0.10 → 1.1: snapshots get the extra data v3 requires (64-bit VM state size, disk size) through a
 * metadata switch when they lack it; then one header write makes the image v3 (112-byte header, zlib, the
 * feature name table qemu writes, no feature bits).
 */
async function upgrade(image: Qcow2Image, writer: Qcow2Writer): Promise<void> {
  if (image.snapshots.some((s) => s.extraData.length < 16)) {
    const sw = new MetadataSwitch(image, writer.refcounts);
    const entries: SnapshotEntry[] = image.snapshots.map((s) => {
      if (s.extraData.length >= 16) return s;
      const extraData = new Uint8Array(SNAPSHOT_EXTRA_DATA_BYTES);
      extraData.set(s.extraData);
      // A v2 snapshot that recorded no disk size was taken at the current one (qemu assumes the same).
      return { ...s, extraData, diskSize: s.diskSize ?? image.virtualSize, icount: s.extraData.length >= 24 ? s.icount : undefined };
    });
    const table = encodeSnapshotTable(entries);
    const clusters = Math.ceil(table.length / image.clusterSize);
    const offset = await sw.allocate(clusters);
    const padded = new Uint8Array(clusters * image.clusterSize);
    padded.set(table);
    await sw.write(padded, offset);
    if (image.header.snapshotsOffset !== 0) await sw.free(image.header.snapshotsOffset, Math.ceil(image.snapshotTableBytes / image.clusterSize));
    await sw.commit({ size: image.virtualSize, l1: image.activeL1.bytes, l1TableOffset: image.header.l1TableOffset, snapshots: { entries, offset, tableBytes: table.length } });
  }
  await rewriteHeader(image, (header) => {
    header.version = 3;
    header.headerLength = V3_HEADER_LENGTH;
    header.compressionType = CompressionType.Zlib;
    header.incompatibleFeatures = 0n;
    header.compatibleFeatures = 0n;
    header.autoclearFeatures = 0n;
    header.unknownHeaderBytes = new Uint8Array(0);
    const withTable = withExtension(header.extensions, HeaderExtensionType.FeatureNameTable, encodeFeatureNameTable(QEMU_FEATURE_NAMES));
    // Like qemu, the table only when it fits (and never with clusters of 4 KiB or less).
    const candidate = { ...header, extensions: withTable };
    if (image.clusterSize > 4096 && encodeHeader({ ...candidate }).length <= image.clusterSize) header.extensions = withTable;
  });
}

async function setDataFileOptions(image: Qcow2Image, dataFile: string | undefined, dataFileRaw: boolean): Promise<void> {
  await rewriteHeader(image, (header) => {
    header.autoclearFeatures = setBit(header.autoclearFeatures, AutoclearFeature.DataFileRaw, dataFileRaw);
    if (dataFile !== undefined) {
      header.extensions = withExtension(header.extensions, HeaderExtensionType.ExternalDataFile, dataFile === '' ? undefined : encodeStringExtension(HeaderExtensionType.ExternalDataFile, dataFile));
    }
  });
}

/** lazy_refcounts: the compatible feature bit, one 8-byte header write. */
async function setLazyRefcounts(image: Qcow2Image, on: boolean): Promise<void> {
  await writeHeaderFields(image.storage, image.header, { compatibleFeatures: setBit(image.header.compatibleFeatures, CompatibleFeature.LazyRefcounts, on) });
  await image.storage.flush();
}

/**
 * compat=1.1 → 0.10: zero clusters become data v2 can read (expandZeroClusters), zstd without compressed
 * clusters becomes zlib, and one header write makes the image v2 (72-byte header, no feature words, no feature
 * table). Persistent bitmaps cannot exist in v2: qemu keeps their extension (unusable, and leaked); here it is
 * dropped in the same header write and, when the bitmaps were consistent, their clusters are freed after it.
 */
async function downgrade(device: AmendTarget, progress: (done: number, total: number) => void): Promise<void> {
  const image = device.image;
  const writer = writerOf(device);
  const { releasedShared } = await expandZeroClusters(image, writer.refcounts, { hasBacking: image.backingFile !== undefined && image.backingFile !== '', onProgress: progress });
  // A shared cluster that lost references may now be referenced once: active entries get COPIED back.
  if (releasedShared > 0) await recomputeCopied(image, writer);
  const bitmaps = await loadBitmapState(image);
  const freed: Array<{ offset: number; count: number }> = [];
  if (bitmaps.consistent && bitmaps.entries.length > 0) {
    freed.push({ offset: bitmaps.directoryOffset, count: Math.ceil(bitmaps.directorySize / image.clusterSize) });
    for (const entry of bitmaps.entries) freed.push(...(await bitmapClusters(image, entry)));
  }
  await rewriteHeader(image, (header) => {
    header.version = 2;
    header.incompatibleFeatures = 0n;
    header.compatibleFeatures = 0n;
    header.autoclearFeatures = 0n;
    header.compressionType = CompressionType.Zlib;
    header.extensions = header.extensions.filter((e) => e.type !== HeaderExtensionType.FeatureNameTable && e.type !== HeaderExtensionType.Bitmaps);
  });
  for (const { offset, count } of freed) await writer.refcounts.free(offset, count);
  await writer.refcounts.flush();
}
