import { Qcow2Error } from '../errors.js';
import type { BlockDevice, ImageFormat } from '../device/block-device.js';
import { Qcow2Device } from '../device/qcow2-device.js';
import { RawDevice } from '../device/raw-device.js';
import type { Qcow2Image } from '../engine/qcow2-image.js';
import {
  checkBitmapEntryConstraints,
  checkBitmapsExtension,
  decodeBitmapDirectory,
  decodeBitmapsExtension,
  hasBitmapFlag,
  BitmapFlag,
} from '../format/bitmap-directory.js';
import { AutoclearFeature, HeaderExtensionType, compressionTypeName } from '../format/constants.js';
import { findExtension } from '../format/header-extensions.js';
import { hasBit } from '../format/header.js';
import type { SnapshotEntry } from '../format/snapshot-table.js';
import type { Storage } from '../io/storage.js';
import { cString, fullBackingFilename } from './backing-names.js';

// Opening an image for info (metadata only) is open-for-info.ts; callers find both here.
export { fullBackingFilename } from './backing-names.js';
export { openImageForInfo, type OpenForInfoOptions } from './open-for-info.js';

/**
 * `qemu-img info` as data: an ImageInfo carries qemu-img 7.2's JSON keys, in the order qemu prints them, so
 * `JSON.stringify` (or a qemu-style printer) of it is what OpenStack-like callers already parse.
 *
 * Key order: qemu builds these objects as QDicts, whose iteration order is that of a 512-bucket hash table
 * (tdb_hash of the key), not the schema order. `qdictOrdered` reproduces it, so keys that appear only in some
 * images (data-file, bitmaps, backing-filename…) land where qemu puts them.
 */

/** One internal snapshot, as `qemu-img info` reports it. */
export interface SnapshotInfo {
  /** Instruction count; absent when it was not recorded (stored as -1). A bigint only past 2^53. */
  icount?: number | bigint;
  'vm-clock-nsec': number;
  name: string;
  'date-sec': number;
  'date-nsec': number;
  'vm-clock-sec': number;
  id: string;
  'vm-state-size': number;
}

/** Bitmap flags as qemu-img info names them. */
export type BitmapInfoFlag = 'in-use' | 'auto';

/** One persistent bitmap, as qemu-img info lists it. */
export interface BitmapInfo {
  flags: BitmapInfoFlag[];
  name: string;
  granularity: number;
}

/** format-specific.data for qcow2. v2 images ("0.10") have only compat, compression-type and refcount-bits. */
export interface Qcow2SpecificInfo {
  compat: '0.10' | '1.1';
  'compression-type': 'zlib' | 'zstd';
  'lazy-refcounts'?: boolean;
  bitmaps?: BitmapInfo[];
  'refcount-bits': number;
  /** The external data file name as stored in the image (not resolved). */
  'data-file'?: string;
  /** Present when the image has an external data file. */
  'data-file-raw'?: boolean;
  corrupt?: boolean;
  'extended-l2'?: boolean;
}

/** One extent of a VMDK, as qemu-img info lists it under format-specific.data.extents. */
export interface VmdkExtentInfo {
  compressed?: boolean;
  'virtual-size': number;
  filename: string;
  'cluster-size'?: number;
  format: string;
}

/** format-specific.data for vmdk. */
export interface VmdkSpecificInfo {
  cid: number;
  'parent-cid': number;
  'create-type': string;
  extents: VmdkExtentInfo[];
}

/** qemu-img info's format-specific section. */
export type FormatSpecificInfo = { type: 'qcow2'; data: Qcow2SpecificInfo } | { type: 'vmdk'; data: VmdkSpecificInfo };

/** An image's `qemu-img info --output=json` object: qemu's keys, in qemu's order. */
export interface ImageInfo {
  'backing-filename-format'?: string;
  snapshots?: SnapshotInfo[];
  /** qemu's bdrv_getlength: raw sizes round up to 512 bytes, qcow2 sizes down. */
  'virtual-size': number;
  filename: string;
  'cluster-size'?: number;
  format: ImageFormat;
  /** Bytes the file occupies on its host (st_blocks * 512), when the storage can tell. */
  'actual-size'?: number;
  'format-specific'?: FormatSpecificInfo;
  /** The backing name joined to the image's directory as qemu does (see fullBackingFilename). */
  'full-backing-filename'?: string;
  /** The backing file name exactly as stored. */
  'backing-filename'?: string;
  'dirty-flag': boolean;
}

/** Options of imageInfo. */
export interface ImageInfoOptions {
  /** Told about conditions qemu-img reports on stderr without failing (e.g. bitmaps left inconsistent). */
  warn?: (message: string) => void;
}

// ---------------------------------------------------------------------------------------------------------
// qemu's QDict order

const QDICT_BUCKETS = 512;

/** qemu's tdb_hash (qobject/qdict.c), over the key's UTF-8 bytes. */
function qdictBucket(key: string): number {
  const bytes = textEncoder.encode(key);
  let value = Math.imul(0x238f13af, bytes.length) >>> 0;
  for (let i = 0; i < bytes.length; i++) value = (value + ((bytes[i]! << ((i * 5) % 24)) >>> 0)) >>> 0;
  return ((Math.imul(1103515243, value) + 12345) >>> 0) % QDICT_BUCKETS;
}

/**
 * Builds an object whose keys iterate as a qemu QDict filled with `entries` (given in QAPI schema order, the
 * order qemu inserts them) would: by bucket, and inside a bucket the last inserted first. Undefined values are
 * left out, as absent optional members are.
 */
function qdictOrdered<T>(entries: Array<[string, unknown]>): T {
  const present = entries
    .filter(([, value]) => value !== undefined)
    .map(([key, value], index) => ({ key, value, index, bucket: qdictBucket(key) }));
  present.sort((a, b) => a.bucket - b.bucket || b.index - a.index);
  const out: Record<string, unknown> = {};
  for (const { key, value } of present) out[key] = value;
  return out as T;
}

// ---------------------------------------------------------------------------------------------------------
// Names

const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder();

/** qemu copies snapshot ids and names into fixed buffers (128 and 256 bytes) before reporting them. */
function truncateUtf8(text: string, maxBytes: number): string {
  const bytes = textEncoder.encode(text);
  return bytes.length <= maxBytes ? text : textDecoder.decode(bytes.subarray(0, maxBytes));
}

// ---------------------------------------------------------------------------------------------------------
// Info

const NS_PER_SEC = 1_000_000_000;

function snapshotInfo(snapshot: SnapshotEntry): SnapshotInfo {
  let icount: number | bigint | undefined;
  if (snapshot.icount !== undefined) {
    // qemu reports the u64 as a signed int64.
    const signed = BigInt.asIntN(64, snapshot.icount);
    icount = signed >= BigInt(Number.MIN_SAFE_INTEGER) && signed <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(signed) : signed;
  }
  return qdictOrdered<SnapshotInfo>([
    ['id', truncateUtf8(snapshot.id, 127)],
    ['name', truncateUtf8(snapshot.name, 255)],
    ['vm-state-size', snapshot.vmStateSize],
    ['date-sec', snapshot.dateSec],
    ['date-nsec', snapshot.dateNsec],
    ['vm-clock-sec', Math.floor(snapshot.vmClockNsec / NS_PER_SEC)],
    ['vm-clock-nsec', snapshot.vmClockNsec % NS_PER_SEC],
    ['icount', icount],
  ]);
}

/** The internal snapshots of a device, as `qemu-img info` and `qemu-img snapshot -l` list them. */
export function snapshotInfos(device: BlockDevice): SnapshotInfo[] {
  if (!(device instanceof Qcow2Device)) return [];
  return device.image.snapshots.map(snapshotInfo);
}

function bitmapFlags(flags: number): BitmapInfoFlag[] {
  const out: BitmapInfoFlag[] = [];
  if (hasBitmapFlag(flags, BitmapFlag.InUse)) out.push('in-use');
  if (hasBitmapFlag(flags, BitmapFlag.Auto)) out.push('auto');
  return out;
}

/**
 * The persistent bitmaps, as qemu lists them: only when the autoclear "bitmaps" bit vouches for the
 * extension (otherwise qemu warns and ignores it), after qemu's checks of the extension and of every
 * directory entry. Undefined when there are none.
 */
async function bitmapInfos(image: Qcow2Image, qemuVirtualSize: number, options: ImageInfoOptions): Promise<BitmapInfo[] | undefined> {
  const extension = findExtension(image.header.extensions, HeaderExtensionType.Bitmaps);
  if (extension === undefined) return undefined;
  const fields = decodeBitmapsExtension(extension.data);
  if (!hasBit(image.header.autoclearFeatures, AutoclearFeature.Bitmaps)) {
    options.warn?.(
      image.header.version === 2
        ? 'This qcow2 v2 image contains bitmaps, but they may have been modified by a program without persistent bitmap support; so now they must all be considered inconsistent'
        : 'a program lacking bitmap support modified this file, so all bitmaps are now considered inconsistent',
    );
    return undefined;
  }
  checkBitmapsExtension(fields, image.clusterSize);
  const { bitmapDirectoryOffset: offset, bitmapDirectorySize: size } = fields;
  if (offset + size > image.fileSize) {
    throw new Qcow2Error('TRUNCATED', `bitmap directory (offset 0x${offset.toString(16)}, ${size} bytes) lies past the end of the file (${image.fileSize} bytes)`);
  }
  const bytes = new Uint8Array(size);
  if (size > 0) {
    const got = await image.storage.read(bytes, offset);
    if (got < size) throw new Qcow2Error('TRUNCATED', 'bitmap directory lies past the end of the file');
  }
  const geometry = { clusterSize: image.clusterSize, virtualSize: qemuVirtualSize };
  const entries = decodeBitmapDirectory(bytes, fields.nbBitmaps, { checkEntry: (entry) => checkBitmapEntryConstraints(entry, geometry) });
  return entries.map((entry) =>
    qdictOrdered<BitmapInfo>([
      ['name', entry.name],
      ['granularity', 2 ** entry.granularityBits],
      ['flags', bitmapFlags(entry.flags)],
    ]),
  );
}

async function qcow2SpecificInfo(image: Qcow2Image, qemuVirtualSize: number, options: ImageInfoOptions): Promise<FormatSpecificInfo> {
  const compressionType = compressionTypeName(image.layout.compressionType);
  let data: Qcow2SpecificInfo;
  if (image.header.version === 2) {
    // A v2 header has no feature words: qemu reports neither lazy refcounts, corrupt, extended L2 nor bitmaps.
    data = qdictOrdered<Qcow2SpecificInfo>([
      ['compat', '0.10'],
      ['refcount-bits', image.layout.refcountBits],
      ['compression-type', compressionType],
    ]);
  } else {
    const dataFile = image.dataFileName;
    const externalDataFile = image.layout.externalDataFile;
    data = qdictOrdered<Qcow2SpecificInfo>([
      ['compat', '1.1'],
      // qemu reports the name whenever the extension is there, and "raw" whenever the feature bit is.
      ['data-file', dataFile === undefined ? undefined : cString(dataFile)],
      ['data-file-raw', externalDataFile ? hasBit(image.header.autoclearFeatures, AutoclearFeature.DataFileRaw) : undefined],
      ['extended-l2', image.layout.extendedL2],
      ['lazy-refcounts', image.lazyRefcounts],
      ['corrupt', image.corrupt],
      ['refcount-bits', image.layout.refcountBits],
      ['bitmaps', await bitmapInfos(image, qemuVirtualSize, options)],
      ['compression-type', compressionType],
    ]);
  }
  return qdictOrdered<FormatSpecificInfo>([
    ['type', 'qcow2'],
    ['data', data],
  ]);
}

/** A plain object tree whose keys are in qemu's schema order, reordered as qemu prints it (see qdictOrdered). */
function inQdictOrder<T>(value: T): T {
  if (Array.isArray(value)) return value.map((item) => inQdictOrder(item)) as T;
  if (typeof value !== 'object' || value === null) return value;
  return qdictOrdered<T>(Object.entries(value).map(([key, member]) => [key, inQdictOrder(member)]));
}

function storageOf(device: BlockDevice): Storage | undefined {
  if (device instanceof Qcow2Device) return device.image.storage;
  if (device instanceof RawDevice) return device.storage;
  return undefined;
}

async function actualSize(device: BlockDevice): Promise<number | undefined> {
  if (device.allocatedSize !== undefined) {
    try {
      return await device.allocatedSize();
    } catch {
      return undefined;
    }
  }
  const storage = storageOf(device);
  if (storage?.allocatedSize === undefined) return undefined;
  try {
    return await storage.allocatedSize();
  } catch {
    return undefined; // qemu: "disk size: unavailable"
  }
}

/** `qemu-img info` of one device (not of its backing chain: see backingChain). */
export async function imageInfo(device: BlockDevice, options: ImageInfoOptions = {}): Promise<ImageInfo> {
  try {
    return await imageInfoUnattributed(device, options);
  } catch (error) {
    throw error instanceof Qcow2Error ? error.withFile(device.filename) : error;
  }
}

async function imageInfoUnattributed(device: BlockDevice, options: ImageInfoOptions): Promise<ImageInfo> {
  const actual = await actualSize(device);
  if (!(device instanceof Qcow2Device)) {
    const details = device.details?.() ?? {};
    // qemu counts in 512-byte sectors; a raw file's length rounds up.
    return qdictOrdered<ImageInfo>([
      ['filename', device.filename],
      ['format', device.format],
      ['dirty-flag', storageOf(device)?.blockInfo === false ? undefined : false],
      ['actual-size', actual],
      ['virtual-size', device.format === 'raw' ? Math.ceil(device.size / 512) * 512 : device.size],
      ['cluster-size', details.clusterSize],
      ['format-specific', details.formatSpecific === undefined ? undefined : (inQdictOrder(details.formatSpecific) as unknown as FormatSpecificInfo)],
    ]);
  }
  const image = device.image;
  // qcow2 keeps total_sectors = size / 512: a size that is not a multiple of 512 rounds down.
  const virtualSize = Math.floor(image.virtualSize / 512) * 512;
  const backingName = image.backingFile === undefined ? '' : cString(image.backingFile);
  const backingFormat = image.backingFormat;
  const snapshots = snapshotInfos(device);
  return qdictOrdered<ImageInfo>([
    ['filename', device.filename],
    ['format', 'qcow2'],
    ['dirty-flag', image.dirty],
    ['actual-size', actual],
    ['virtual-size', virtualSize],
    ['cluster-size', image.clusterSize],
    ['backing-filename', backingName === '' ? undefined : backingName],
    ['full-backing-filename', backingName === '' ? undefined : fullBackingFilename(device.filename, backingName)],
    ['backing-filename-format', backingName === '' || backingFormat === undefined || backingFormat === '' ? undefined : backingFormat],
    ['snapshots', snapshots.length === 0 ? undefined : snapshots],
    ['format-specific', await qcow2SpecificInfo(image, virtualSize, options)],
  ]);
}

/** `qemu-img info --backing-chain`: the info of the device and of each `backing` layer below it, top first. */
export async function backingChain(device: BlockDevice, options: ImageInfoOptions = {}): Promise<ImageInfo[]> {
  const infos: ImageInfo[] = [];
  for (let layer: BlockDevice | undefined = device; layer !== undefined; layer = layer.backing) {
    infos.push(await imageInfo(layer, options));
  }
  return infos;
}
