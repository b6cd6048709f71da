import { Qcow2Error } from '../../errors.js';
import { decodeStruct, encodeStruct, viewOf, type StructSpec } from '../../format/struct.js';
import { vhdChecksum } from './footer.js';

/**
 * The dynamic disk header of a dynamic (sparse) VHD: 1024 bytes at the footer's data offset, big-endian. It
 * locates the block allocation table (BAT), one u32 per block giving the block's sector in the file
 * (0xffffffff: not allocated); each allocated block starts with its sector bitmap, then the block's data.
 */
export const VHD_DYNAMIC_HEADER_SIZE = 1024;
export const VHD_DYNAMIC_COOKIE = 'cxsparse';
/** The block size qemu and Hyper-V use for VHD: 2 MiB. */
export const VHD_DEFAULT_BLOCK_SIZE = 2 * 1024 * 1024;
export const VHD_UNALLOCATED = 0xffffffff;

const layout = {
  tableOffset: { type: 'u64', offset: 16 },
  headerVersion: { type: 'u32', offset: 24 },
  maxTableEntries: { type: 'u32', offset: 28 },
  blockSize: { type: 'u32', offset: 32 },
  checksum: { type: 'u32', offset: 36 },
} as const satisfies StructSpec<string>;

const CHECKSUM_OFFSET = 36;
const DATA_OFFSET_OFFSET = 8;

export interface VhdDynamicHeader {
  /** File offset of the BAT. */
  tableOffset: number;
  headerVersion: number;
  maxTableEntries: number;
  blockSize: number;
  checksum: number;
}

/** The sector bitmap in front of each block: one bit per 512-byte sector, padded to whole sectors. */
export function sectorBitmapSize(blockSize: number): number {
  return Math.ceil(blockSize / (512 * 8) / 512) * 512;
}

/**
 * Decodes the dynamic header. qemu does not check its checksum (only the footer's), so neither does this; the
 * block size must be a power of two of at least one sector, as qemu requires.
 */
export function decodeVhdDynamicHeader(bytes: Uint8Array): VhdDynamicHeader {
  if (bytes.length < VHD_DYNAMIC_HEADER_SIZE) throw new Qcow2Error('TRUNCATED', 'Error reading dynamic VHD header (file too short)');
  if (new TextDecoder('latin1').decode(bytes.subarray(0, 8)) !== VHD_DYNAMIC_COOKIE) {
    throw new Qcow2Error('BAD_MAGIC', 'Invalid header magic (no "cxsparse" dynamic disk header)');
  }
  const header = decodeStruct(layout, bytes, 'VHD dynamic header');
  const { blockSize } = header;
  if (blockSize < 512 || (blockSize & (blockSize - 1)) !== 0) throw new Qcow2Error('BAD_HEADER', `Invalid block size ${blockSize}`);
  return header;
}

export function encodeVhdDynamicHeader(header: Omit<VhdDynamicHeader, 'checksum'>): Uint8Array {
  const bytes = new Uint8Array(VHD_DYNAMIC_HEADER_SIZE);
  for (let i = 0; i < 8; i++) bytes[i] = VHD_DYNAMIC_COOKIE.charCodeAt(i);
  encodeStruct(layout, { tableOffset: header.tableOffset, headerVersion: header.headerVersion, maxTableEntries: header.maxTableEntries, blockSize: header.blockSize, checksum: 0 }, bytes);
  const view = viewOf(bytes);
  // "No next structure": the specification says 0xFFFFFFFF, but Microsoft's tools expect all 64 bits set.
  view.setUint32(DATA_OFFSET_OFFSET, 0xffffffff);
  view.setUint32(DATA_OFFSET_OFFSET + 4, 0xffffffff);
  view.setUint32(CHECKSUM_OFFSET, vhdChecksum(bytes, CHECKSUM_OFFSET));
  return bytes;
}
