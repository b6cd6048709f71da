import { viewOf } from '../../format/struct.js';
import { MiB } from './header-section.js';

/**
 * The VHDX block allocation table (VHDX 1.0 §2.5): u64 entries, the state in bits 0–2 and the file offset in
 * MiB in bits 20–63. Payload block entries are interleaved with sector bitmap entries: after every
 * `chunkRatio` payload entries comes one for the sector bitmap of that chunk (used by differencing disks only).
 */
export const PayloadState = {
  NotPresent: 0,
  Undefined: 1,
  Zero: 2,
  Unmapped: 3,
  /** The value the 0.95 draft gave "unmapped"; qemu reads it as such. */
  UnmappedV095: 5,
  FullyPresent: 6,
  PartiallyPresent: 7,
} as const;

const STATE_MASK = 7;
/** 2^23 sectors per chunk: a chunk holds as many payload blocks as one 1 MiB sector bitmap covers. */
const SECTORS_PER_CHUNK = 2 ** 23;

export interface BatGeometry {
  blockSize: number;
  /** Payload blocks per sector bitmap block. */
  chunkRatio: number;
  payloadBlocks: number;
  /**
   * Entries the table must have room for, payload and bitmap entries together, counted as qemu counts them: for
   * a disk of size 0 its unsigned arithmetic wraps around and asks for (2^32 - 1) / chunkRatio entries (so a
   * VHDX of size 0 that qemu can open has a BAT region that large).
   */
  entries: number;
  /** Entries that map the disk: up to the last payload block's. */
  usedEntries: number;
}

export function batGeometry(virtualDiskSize: number, blockSize: number, logicalSectorSize: number): BatGeometry {
  const chunkRatio = (SECTORS_PER_CHUNK * logicalSectorSize) / blockSize;
  const payloadBlocks = Math.ceil(virtualDiskSize / blockSize);
  // qemu's count for a disk without parent (the bitmap entry after the last, partial chunk is not there), in
  // its uint32 arithmetic.
  const entries = payloadBlocks + Math.floor(((payloadBlocks - 1) >>> 0) / chunkRatio);
  const usedEntries = payloadBlocks === 0 ? 0 : payloadBlocks + Math.floor((payloadBlocks - 1) / chunkRatio);
  return { blockSize, chunkRatio, payloadBlocks, entries, usedEntries };
}

/** The table index of payload block `block` (bitmap entries interleaved). */
export function batIndex(geometry: BatGeometry, block: number): number {
  return block + Math.floor(block / geometry.chunkRatio);
}

/** The state of entry `index` of a table held as raw little-endian bytes. */
export function entryState(table: Uint8Array, index: number): number {
  return table[index * 8]! & STATE_MASK;
}

/** The file offset (bytes) of entry `index`: its MiB field, bits 20–63. */
export function entryOffset(table: Uint8Array, index: number): number {
  const view = viewOf(table);
  const lo = view.getUint32(index * 8, true);
  const hi = view.getUint32(index * 8 + 4, true);
  // Bits 20..31 of the low word and the high word (up to 2^53 bytes; larger offsets are refused by the caller).
  return (lo >>> 20) * MiB + hi * 0x100000000;
}

/** Whether entry `index`'s offset overflows a JS number (its high word above 2^21). */
export function entryOffsetTooLarge(table: Uint8Array, index: number): boolean {
  return viewOf(table).getUint32(index * 8 + 4, true) > 0x1fffff;
}

/** Sets entry `index` to `state` at file offset `offset` (a MiB multiple; 0 for states without one). */
export function setEntry(table: Uint8Array, index: number, state: number, offset: number): void {
  const view = viewOf(table);
  const mib = offset / MiB;
  view.setUint32(index * 8, (((mib & 0xfff) << 20) | state) >>> 0, true);
  view.setUint32(index * 8 + 4, Math.floor(offset / 0x100000000), true);
}
