import { Qcow2Error } from '../../errors.js';
import { decodeStruct, encodeStruct, viewOf, type StructSpec } from '../../format/struct.js';

/**
 * The header of a VMDK sparse extent ("hosted sparse extent", VMware Virtual Disk Format 5.0 §3), 512 bytes,
 * little-endian, after the magic "KDMV". It locates the embedded descriptor, the grain directory (GD: one u32 per
 * grain table, its sector), the redundant GD, and where grains start; grain tables (GT) hold one u32 per grain,
 * the grain's sector (0: unallocated; 1: a zeroed grain, with the zeroed-grain flag).
 */
export const VMDK_SECTOR = 512;
export const VMDK4_MAGIC = 0x564d444b; // "KDMV" as a little-endian u32
export const VMDK3_MAGIC = 0x434f5744; // "COWD"
/** gdOffset 0xffffffffffffffff (a stream-optimized disk: the grain directory comes at the end, the footer says where). */
export const GD_AT_END_MARK = 'at-end' as const;

export const VmdkFlag = {
  /** Valid newline detection (the check bytes below). */
  NewlineDetect: 1 << 0,
  /** A redundant grain directory exists. */
  RedundantGrainDirectory: 1 << 1,
  /** Grain table entry 1 means "zeroed grain". */
  ZeroedGrain: 1 << 2,
  CompressedGrains: 1 << 16,
  /** Grains and metadata carry stream markers. */
  Markers: 1 << 17,
} as const;

export const VMDK_COMPRESSION_DEFLATE = 1;

const layout = {
  version: { type: 'u32le', offset: 4 },
  flags: { type: 'u32le', offset: 8 },
  capacity: { type: 'u64le', offset: 12 },
  grainSectors: { type: 'u64le', offset: 20 },
  descriptorOffset: { type: 'u64le', offset: 28 },
  descriptorSectors: { type: 'u64le', offset: 36 },
  gtesPerGt: { type: 'u32le', offset: 44 },
  rgdOffset: { type: 'u64le', offset: 48 },
  overhead: { type: 'u64le', offset: 64 },
  uncleanShutdown: { type: 'u8', offset: 72 },
  compressAlgorithm: { type: 'u16le', offset: 77 },
} as const satisfies StructSpec<string>;

const GD_OFFSET = 56;
/** "\n \r\n": lets a reader detect a file mangled by a text-mode transfer. */
const CHECK_BYTES = [0x0a, 0x20, 0x0d, 0x0a];

export interface VmdkSparseHeader {
  version: number;
  flags: number;
  /** Extent size in sectors. */
  capacity: number;
  grainSectors: number;
  descriptorOffset: number;
  descriptorSectors: number;
  gtesPerGt: number;
  rgdOffset: number;
  /** Sector of the grain directory, or GD_AT_END (the footer has the real one). */
  gdOffset: number | typeof GD_AT_END_MARK;
  /** First sector where grains may go. */
  overhead: number;
  uncleanShutdown: number;
  compressAlgorithm: number;
}

export function magicOf(bytes: Uint8Array): number {
  return bytes.length >= 4 ? viewOf(bytes).getUint32(0, true) : 0;
}

export function hasFlag(flags: number, flag: number): boolean {
  return (flags & flag) !== 0;
}

/** Decodes a VMDK4 sparse header (the magic included). */
export function decodeSparseHeader(bytes: Uint8Array): VmdkSparseHeader {
  if (bytes.length < VMDK_SECTOR) throw new Qcow2Error('TRUNCATED', `VMDK header is ${bytes.length} bytes, not ${VMDK_SECTOR}`);
  if (magicOf(bytes) !== VMDK4_MAGIC) throw new Qcow2Error('BAD_MAGIC', 'Image not in VMDK format');
  const view = viewOf(bytes);
  const fields = decodeStruct(layout, bytes, 'VMDK header');
  const lo = view.getUint32(GD_OFFSET, true);
  const hi = view.getUint32(GD_OFFSET + 4, true);
  let gdOffset: VmdkSparseHeader['gdOffset'];
  if (lo === 0xffffffff && hi === 0xffffffff) gdOffset = GD_AT_END_MARK;
  // Past 2^53 sectors it is past any file: qemu reads zeros there (an empty directory); so does the extent.
  else gdOffset = Math.min(hi * 0x100000000 + lo, Number.MAX_SAFE_INTEGER);
  return { ...fields, gdOffset };
}

/** Encodes a header into one sector (magic, fields, check bytes). */
export function encodeSparseHeader(header: VmdkSparseHeader): Uint8Array {
  const bytes = new Uint8Array(VMDK_SECTOR);
  const view = viewOf(bytes);
  view.setUint32(0, VMDK4_MAGIC, true);
  const { version, flags, capacity, grainSectors, descriptorOffset, descriptorSectors, gtesPerGt, rgdOffset, overhead, uncleanShutdown, compressAlgorithm } = header;
  encodeStruct(layout, { version, flags, capacity, grainSectors, descriptorOffset, descriptorSectors, gtesPerGt, rgdOffset, overhead, uncleanShutdown, compressAlgorithm }, bytes);
  if (header.gdOffset === GD_AT_END_MARK) {
    view.setUint32(GD_OFFSET, 0xffffffff, true);
    view.setUint32(GD_OFFSET + 4, 0xffffffff, true);
  } else {
    view.setUint32(GD_OFFSET, header.gdOffset >>> 0, true);
    view.setUint32(GD_OFFSET + 4, Math.floor(header.gdOffset / 0x100000000), true);
  }
  bytes.set(CHECK_BYTES, 73);
  return bytes;
}
