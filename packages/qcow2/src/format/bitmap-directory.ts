import { Qcow2Error } from '../errors.js';
import { BITMAPS_EXTENSION_BYTES, decodeBitmapsExtensionFields, type BitmapsExtensionFields } from './header-extensions.js';
import { readU64, viewOf, writeU64 } from './struct.js';

/**
 * The persistent dirty bitmap directory (qcow2 spec "Bitmaps extension"): a list of entries, each
 * `u64 bitmap_table_offset, u32 bitmap_table_size, u32 flags, u8 type, u8 granularity_bits, u16 name_size,
 * u32 extra_data_size`, then the extra data, the name (no NUL), and padding to 8 bytes.
 * Pure bytes <-> structs; the limits are qemu 7.2's (block/qcow2.h, block/qcow2-bitmap.c).
 */

/** qemu's QCOW2_MAX_BITMAPS. */
export const MAX_BITMAPS = 65535;
/** qemu's QCOW2_MAX_BITMAP_DIRECTORY_SIZE: 1024 bytes per bitmap (just under 64 MiB). */
export const MAX_BITMAP_DIRECTORY_BYTES = 1024 * MAX_BITMAPS;
/** The fixed part of one directory entry. */
export const BITMAP_DIRECTORY_ENTRY_FIXED_BYTES = 24;
/** The only bitmap type the spec defines. */
export const BITMAP_TYPE_DIRTY_TRACKING = 1;

/** Bits of a directory entry's flags word. */
export const BitmapFlag = {
  /** The bitmap was in use (not saved cleanly): its data is inconsistent. */
  InUse: 0,
  /** The bitmap tracks writes (enabled) when the image is opened. */
  Auto: 1,
  /** Extra data may be ignored by readers that do not understand it. */
  ExtraDataCompatible: 2,
} as const;
export type BitmapFlag = (typeof BitmapFlag)[keyof typeof BitmapFlag];

/** qemu's bitmap entry constraints (BME_* in qcow2-bitmap.c). */
export const BITMAP_MAX_TABLE_SIZE = 0x8000000;
/** qemu's limit on the size of a bitmap's data, in bytes (BME_MAX_PHYS_SIZE). */
export const BITMAP_MAX_PHYS_SIZE = 0x20000000;
/** Smallest bitmap granularity qemu accepts, as a power of two (512 bytes). */
export const BITMAP_MIN_GRANULARITY_BITS = 9;
/** Largest bitmap granularity qemu accepts, as a power of two (2 GiB). */
export const BITMAP_MAX_GRANULARITY_BITS = 31;
/** Longest bitmap name qemu accepts, in bytes. */
export const BITMAP_MAX_NAME_SIZE = 1023;
/** Flags qemu 7.2 refuses (everything but in_use and auto; it does not implement extra_data_compatible). */
export const QEMU_RESERVED_BITMAP_FLAGS = 0xfffffffc;

/** One persistent dirty bitmap, as its bitmap directory entry stores it. */
export interface BitmapDirectoryEntry {
  bitmapTableOffset: number;
  /** Entries (u64) in the bitmap table. */
  bitmapTableSize: number;
  flags: number;
  type: number;
  granularityBits: number;
  name: string;
  /** Extra data as stored (kept byte for byte). */
  extraData: Uint8Array;
}


const textDecoder = new TextDecoder();
const textEncoder = new TextEncoder();

function align8(n: number): number {
  return Math.ceil(n / 8) * 8;
}

function directoryError(message: string): Qcow2Error {
  return new Qcow2Error('BAD_BITMAP_DIRECTORY', message);
}

/** Whether bit `flag` (a {@link BitmapFlag}) is set in a directory entry's flags. */
export function hasBitmapFlag(flags: number, flag: BitmapFlag): boolean {
  return ((flags >>> flag) & 1) === 1;
}

/** Encoded size of one entry, padding included. */
export function bitmapDirectoryEntrySize(nameBytes: number, extraDataBytes: number): number {
  return align8(BITMAP_DIRECTORY_ENTRY_FIXED_BYTES + extraDataBytes + nameBytes);
}

/** Decodes the data of a bitmaps header extension; it must be exactly 24 bytes, as qemu requires. */
export function decodeBitmapsExtension(data: Uint8Array): BitmapsExtensionFields {
  if (data.length !== BITMAPS_EXTENSION_BYTES) {
    throw new Qcow2Error('BAD_EXTENSION', `bitmaps_ext: Invalid extension length (${data.length} bytes, expected ${BITMAPS_EXTENSION_BYTES})`);
  }
  return decodeBitmapsExtensionFields(data);
}

/** The checks qemu's open makes on a bitmaps extension it is going to use (autoclear bit 0 set). */
export function checkBitmapsExtension(ext: BitmapsExtensionFields, clusterSize: number): void {
  if (ext.reserved !== 0) throw new Qcow2Error('BAD_EXTENSION', 'bitmaps_ext: Reserved field is not zero');
  if (ext.nbBitmaps > MAX_BITMAPS) {
    throw new Qcow2Error('BAD_EXTENSION', `bitmaps_ext: Image has ${ext.nbBitmaps} bitmaps, exceeding the QEMU supported maximum of ${MAX_BITMAPS}`);
  }
  if (ext.nbBitmaps === 0) throw new Qcow2Error('BAD_EXTENSION', 'found bitmaps extension with zero bitmaps');
  if (ext.bitmapDirectoryOffset % clusterSize !== 0) throw new Qcow2Error('BAD_EXTENSION', 'bitmaps_ext: invalid bitmap directory offset');
  if (ext.bitmapDirectorySize > MAX_BITMAP_DIRECTORY_BYTES) {
    throw new Qcow2Error(
      'BAD_EXTENSION',
      `bitmaps_ext: bitmap directory size (${ext.bitmapDirectorySize}) exceeds the maximum supported size (${MAX_BITMAP_DIRECTORY_BYTES})`,
    );
  }
}

/** Bounds the bitmap directory decoder checks entries against. */
export interface DecodeBitmapDirectoryOptions {
  /**
   * Called on each entry as soon as it is decoded, before the next one is looked at, so a policy (such as
   * qemu's constraints, see checkBitmapEntryConstraints) reports the same first error qemu does.
   */
  checkEntry?: (entry: BitmapDirectoryEntry) => void;
}

/**
 * Decodes a directory of `nbBitmaps` entries that fills `bytes` exactly (its size comes from the extension).
 * Walks it as qemu's bitmap_list_load does: every entry and its name must lie inside the buffer, there must be
 * exactly `nbBitmaps` entries, and nothing may follow the last one.
 */
export function decodeBitmapDirectory(bytes: Uint8Array, nbBitmaps: number, options: DecodeBitmapDirectoryOptions = {}): BitmapDirectoryEntry[] {
  if (bytes.length === 0) throw directoryError('Requested bitmap directory size is zero');
  if (bytes.length > MAX_BITMAP_DIRECTORY_BYTES) throw directoryError('Requested bitmap directory size is too big');
  if (nbBitmaps > MAX_BITMAPS) throw directoryError(`too many bitmaps (${nbBitmaps}, max ${MAX_BITMAPS})`);
  const view = viewOf(bytes);
  const entries: BitmapDirectoryEntry[] = [];
  let offset = 0;
  while (offset < bytes.length) {
    if (offset + BITMAP_DIRECTORY_ENTRY_FIXED_BYTES > bytes.length) throw directoryError('Broken bitmap directory');
    if (entries.length + 1 > nbBitmaps) throw directoryError('More bitmaps found than specified in header extension');
    const nameSize = view.getUint16(offset + 18);
    const extraDataSize = view.getUint32(offset + 20);
    const size = bitmapDirectoryEntrySize(nameSize, extraDataSize);
    if (offset + size > bytes.length) throw directoryError('Broken bitmap directory');
    const extraStart = offset + BITMAP_DIRECTORY_ENTRY_FIXED_BYTES;
    const nameStart = extraStart + extraDataSize;
    const entry: BitmapDirectoryEntry = {
      bitmapTableOffset: readU64(view, offset, 'bitmap table offset'),
      bitmapTableSize: view.getUint32(offset + 8),
      flags: view.getUint32(offset + 12),
      type: view.getUint8(offset + 16),
      granularityBits: view.getUint8(offset + 17),
      name: textDecoder.decode(bytes.subarray(nameStart, nameStart + nameSize)),
      extraData: bytes.slice(extraStart, nameStart),
    };
    options.checkEntry?.(entry);
    entries.push(entry);
    offset += size;
  }
  if (entries.length !== nbBitmaps) throw directoryError('Less bitmaps found than specified in header extension');
  return entries;
}

/** Encodes bitmap directory entries, each padded to 8 bytes as the specification requires. */
export function encodeBitmapDirectory(entries: BitmapDirectoryEntry[]): Uint8Array {
  const names = entries.map((e) => textEncoder.encode(e.name));
  let total = 0;
  entries.forEach((e, i) => {
    if (names[i]!.length > 0xffff) throw new RangeError(`bitmap name too long (${names[i]!.length} bytes)`);
    total += bitmapDirectoryEntrySize(names[i]!.length, e.extraData.length);
  });
  const out = new Uint8Array(total);
  const view = viewOf(out);
  let offset = 0;
  entries.forEach((e, i) => {
    const name = names[i]!;
    writeU64(view, offset, e.bitmapTableOffset);
    view.setUint32(offset + 8, e.bitmapTableSize);
    view.setUint32(offset + 12, e.flags >>> 0);
    view.setUint8(offset + 16, e.type);
    view.setUint8(offset + 17, e.granularityBits);
    view.setUint16(offset + 18, name.length);
    view.setUint32(offset + 20, e.extraData.length);
    out.set(e.extraData, offset + BITMAP_DIRECTORY_ENTRY_FIXED_BYTES);
    out.set(name, offset + BITMAP_DIRECTORY_ENTRY_FIXED_BYTES + e.extraData.length);
    offset += bitmapDirectoryEntrySize(name.length, e.extraData.length);
  });
  return out;
}

/**
 * qemu 7.2's per-entry policy (bitmap_list_load + check_dir_entry): no extra data, known flags only, a
 * dirty-tracking bitmap with granularity 2^9..2^31, a cluster-aligned non-empty table no larger than qemu
 * accepts, and (unless in use) a table big enough for a disk of `virtualSize` bytes. qemu refuses to open an
 * image whose directory breaks any of these; the message is qemu's.
 */
export function checkBitmapEntryConstraints(entry: BitmapDirectoryEntry, image: { clusterSize: number; virtualSize: number }): void {
  if (entry.extraData.length !== 0) throw directoryError('Bitmap extra data is not supported');
  const nameBytes = textEncoder.encode(entry.name).length;
  const fail =
    entry.bitmapTableSize === 0 ||
    entry.bitmapTableOffset === 0 ||
    entry.bitmapTableOffset % image.clusterSize !== 0 ||
    entry.bitmapTableSize > BITMAP_MAX_TABLE_SIZE ||
    entry.granularityBits > BITMAP_MAX_GRANULARITY_BITS ||
    entry.granularityBits < BITMAP_MIN_GRANULARITY_BITS ||
    (entry.flags & QEMU_RESERVED_BITMAP_FLAGS) !== 0 ||
    nameBytes > BITMAP_MAX_NAME_SIZE ||
    entry.type !== BITMAP_TYPE_DIRTY_TRACKING;
  const physBytes = entry.bitmapTableSize * image.clusterSize;
  const tooSmall = !hasBitmapFlag(entry.flags, BitmapFlag.InUse) && image.virtualSize > physBytes * 8 * 2 ** entry.granularityBits;
  if (fail || physBytes > BITMAP_MAX_PHYS_SIZE || tooSmall) {
    throw directoryError(`Bitmap '${entry.name}' doesn't satisfy the constraints`);
  }
}
