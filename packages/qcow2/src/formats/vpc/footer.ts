import { Qcow2Error } from '../../errors.js';
import { decodeStruct, encodeStruct, viewOf, writeU64, type StructSpec } from '../../format/struct.js';

/**
 * The VHD "hard disk footer" (Microsoft Virtual Hard Disk Image Format Specification, 2006), 512 bytes,
 * big-endian. A fixed disk has it only at the end of the file; a dynamic disk also keeps a copy at offset 0.
 */
export const VHD_FOOTER_SIZE = 512;
export const VHD_COOKIE = 'conectix';

/** The footer's disk_type values: a plain object (enums that inline are unusable under isolatedModules). */
export const VhdDiskType = {
  Fixed: 2,
  Dynamic: 3,
  Differencing: 4,
} as const;
export type VhdDiskType = (typeof VhdDiskType)[keyof typeof VhdDiskType];

/** The footer's timestamps count seconds from 2000-01-01 00:00:00 UTC. */
export const VHD_EPOCH_SECONDS = 946684800;

/** data_offset of a fixed disk: "no next structure", all 64 bits set. */
const NO_DATA_OFFSET = 0xffffffff;

const footerLayout = {
  features: { type: 'u32', offset: 8 },
  formatVersion: { type: 'u32', offset: 12 },
  timestamp: { type: 'u32', offset: 24 },
  creatorMajor: { type: 'u16', offset: 32 },
  creatorMinor: { type: 'u16', offset: 34 },
  cylinders: { type: 'u16', offset: 56 },
  heads: { type: 'u8', offset: 58 },
  sectorsPerTrack: { type: 'u8', offset: 59 },
  diskType: { type: 'u32', offset: 60 },
  checksum: { type: 'u32', offset: 64 },
  savedState: { type: 'u8', offset: 84 },
} as const satisfies StructSpec<string>;

const CREATOR_APP_OFFSET = 28;
const CREATOR_OS_OFFSET = 36;
const UNIQUE_ID_OFFSET = 68;
const DATA_OFFSET_OFFSET = 16;
const CHECKSUM_OFFSET = 64;
const ORIGINAL_SIZE_OFFSET = 40;
const CURRENT_SIZE_OFFSET = 48;

/** The VHD footer (also the copy at the start of a dynamic disk): geometry, sizes, disk type, ids. */
export interface VhdFooter {
  features: number;
  formatVersion: number;
  /** Byte offset of the dynamic disk header; undefined for a fixed disk (all bits set). */
  dataOffset: number | undefined;
  timestamp: number;
  /** Four characters naming the program that made the disk ("qemu", "qem2", "win ", "vpc "…). */
  creatorApp: string;
  creatorMajor: number;
  creatorMinor: number;
  creatorOs: string;
  originalSize: number;
  currentSize: number;
  cylinders: number;
  heads: number;
  sectorsPerTrack: number;
  diskType: number;
  checksum: number;
  uniqueId: Uint8Array;
  savedState: number;
}

const latin1 = new TextDecoder('latin1');

function ascii(bytes: Uint8Array, offset: number, length: number): string {
  return latin1.decode(bytes.subarray(offset, offset + length));
}

function putAscii(bytes: Uint8Array, offset: number, text: string, length: number): void {
  for (let i = 0; i < length; i++) bytes[offset + i] = i < text.length ? text.charCodeAt(i) & 0xff : 0;
}

/**
 * The VHD checksum: the one's complement of the sum of the bytes, with the checksum field counted as zero.
 * Footer and dynamic header use the same rule.
 */
export function vhdChecksum(bytes: Uint8Array, checksumOffset: number): number {
  let sum = 0;
  for (let i = 0; i < bytes.length; i++) {
    if (i >= checksumOffset && i < checksumOffset + 4) continue;
    sum = (sum + bytes[i]!) >>> 0;
  }
  return ~sum >>> 0;
}

/** True when the 512 bytes start with the footer cookie. */
export function hasVhdCookie(bytes: Uint8Array): boolean {
  return bytes.length >= 8 && ascii(bytes, 0, 8) === VHD_COOKIE;
}

/** Decodes a footer whose cookie the caller checked; a wrong checksum is refused as qemu refuses it. */
export function decodeVhdFooter(bytes: Uint8Array): VhdFooter {
  if (bytes.length < VHD_FOOTER_SIZE) throw new Qcow2Error('TRUNCATED', `VHD footer is ${bytes.length} bytes, not ${VHD_FOOTER_SIZE}`);
  if (!hasVhdCookie(bytes)) throw new Qcow2Error('BAD_MAGIC', 'invalid VPC image (no "conectix" footer)');
  const fields = decodeStruct(footerLayout, bytes, 'VHD footer');
  const expected = vhdChecksum(bytes.subarray(0, VHD_FOOTER_SIZE), CHECKSUM_OFFSET);
  if (fields.checksum !== expected) {
    throw new Qcow2Error('BAD_CHECKSUM', `Incorrect header checksum (stored 0x${fields.checksum.toString(16)}, computed 0x${expected.toString(16)})`);
  }
  const view = viewOf(bytes);
  const hi = view.getUint32(DATA_OFFSET_OFFSET);
  const lo = view.getUint32(DATA_OFFSET_OFFSET + 4);
  let dataOffset: number | undefined;
  if (!(hi === NO_DATA_OFFSET && lo === NO_DATA_OFFSET)) {
    if (hi > 0x1fffff) throw new Qcow2Error('OFFSET_TOO_LARGE', `VHD footer data offset 0x${hi.toString(16)}${lo.toString(16).padStart(8, '0')} is out of range`);
    dataOffset = hi * 0x100000000 + lo;
  }
  // The sizes are not refused here when huge: qemu ignores original_size, and current_size only counts for some
  // creators (vhdVirtualSize refuses it then). Past 2^53 they are not exact, which no valid disk needs.
  const size = (at: number): number => view.getUint32(at) * 0x100000000 + view.getUint32(at + 4);
  return {
    ...fields,
    originalSize: size(ORIGINAL_SIZE_OFFSET),
    currentSize: size(CURRENT_SIZE_OFFSET),
    dataOffset,
    creatorApp: ascii(bytes, CREATOR_APP_OFFSET, 4),
    creatorOs: ascii(bytes, CREATOR_OS_OFFSET, 4),
    uniqueId: bytes.slice(UNIQUE_ID_OFFSET, UNIQUE_ID_OFFSET + 16),
  };
}

/** Encodes a footer into 512 bytes, computing its checksum (the `checksum` field is ignored). */
export function encodeVhdFooter(footer: Omit<VhdFooter, 'checksum'>): Uint8Array {
  const bytes = new Uint8Array(VHD_FOOTER_SIZE);
  putAscii(bytes, 0, VHD_COOKIE, 8);
  const { features, formatVersion, timestamp, creatorMajor, creatorMinor, cylinders, heads, sectorsPerTrack, diskType, savedState } = footer;
  encodeStruct(footerLayout, { features, formatVersion, timestamp, creatorMajor, creatorMinor, cylinders, heads, sectorsPerTrack, diskType, savedState, checksum: 0 }, bytes);
  const view = viewOf(bytes);
  writeU64(view, ORIGINAL_SIZE_OFFSET, footer.originalSize);
  writeU64(view, CURRENT_SIZE_OFFSET, footer.currentSize);
  if (footer.dataOffset === undefined) {
    view.setUint32(DATA_OFFSET_OFFSET, NO_DATA_OFFSET);
    view.setUint32(DATA_OFFSET_OFFSET + 4, NO_DATA_OFFSET);
  } else {
    view.setUint32(DATA_OFFSET_OFFSET, Math.floor(footer.dataOffset / 0x100000000));
    view.setUint32(DATA_OFFSET_OFFSET + 4, footer.dataOffset >>> 0);
  }
  putAscii(bytes, CREATOR_APP_OFFSET, footer.creatorApp, 4);
  putAscii(bytes, CREATOR_OS_OFFSET, footer.creatorOs, 4);
  bytes.set(footer.uniqueId.subarray(0, 16), UNIQUE_ID_OFFSET);
  view.setUint32(CHECKSUM_OFFSET, vhdChecksum(bytes, CHECKSUM_OFFSET));
  return bytes;
}
