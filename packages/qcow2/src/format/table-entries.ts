import { Qcow2Error } from '../errors.js';

/**
 * L1 and L2 entry codecs. Entries are 64-bit; hot paths handle them as two u32 halves (`hi`, `lo`) instead of
 * BigInt. Bits 9..55 of an L1 entry or of a standard L2 entry hold a host offset: hi bits 0..23 and lo bits 9..31.
 */

const TWO_32 = 0x100000000;
/** Entry bit 63 (hi bit 31): refcount is exactly 1, writes may go in place. */
export const COPIED_HI = 0x80000000;
/** L2 entry bit 62 (hi bit 30): compressed cluster. */
export const COMPRESSED_HI = 0x40000000;
/** Standard L2 entry bit 0: reads as zeros (v3). */
export const ZERO_LO = 1;

/** The host offset an L1 or L2 entry word points at. */
export function entryHostOffset(hi: number, lo: number): number {
  return (hi & 0x00ffffff) * TWO_32 + ((lo & 0xfffffe00) >>> 0);
}

/** Encodes a host offset into an L1/L2 entry word. */
export function encodeHostOffset(hostOffset: number): { hi: number; lo: number } {
  return { hi: Math.floor(hostOffset / TWO_32) & 0x00ffffff, lo: (hostOffset >>> 0) & 0xfffffe00 };
}

/** A decoded L1 entry: the L2 table offset and the COPIED flag. */
export interface L1Entry {
  l2Offset: number;
  copied: boolean;
}

/** Decodes an L1 entry from its two 32-bit halves. */
export function decodeL1Entry(hi: number, lo: number): L1Entry {
  return { l2Offset: entryHostOffset(hi, lo), copied: (hi & COPIED_HI) !== 0 };
}

/** Encodes an L1 entry. */
export function encodeL1Entry(entry: L1Entry): { hi: number; lo: number } {
  const { hi, lo } = encodeHostOffset(entry.l2Offset);
  return { hi: (hi | (entry.copied ? COPIED_HI : 0)) >>> 0, lo: lo >>> 0 };
}

/** Reserved bits of an L1 entry (1..8, 56..62) that must be zero. */
export function l1ReservedBits(hi: number, lo: number): boolean {
  return (lo & 0x1fe) !== 0 || (hi & 0x7f000000) !== 0;
}

/** A decoded L2 entry: normal, zero or compressed, with host offset and flags. */
export type L2Entry =
  | { kind: 'unallocated' }
  /** Zero flag set; hostOffset 0 = plain zero cluster, otherwise a preallocated cluster that reads as zeros. */
  | { kind: 'zero'; hostOffset: number; copied: boolean }
  | { kind: 'normal'; hostOffset: number; copied: boolean }
  | { kind: 'compressed'; hostOffset: number; additionalSectors: number };

/**
 * Decodes a standard L2 entry. With `extendedL2` the zero flag is not used (subcluster bitmaps say it), and
 * a cluster whose offset is 0 is "unallocated" at cluster level even when its bitmap marks zero subclusters.
 */
export function decodeL2Entry(hi: number, lo: number, clusterBits: number, extendedL2: boolean): L2Entry {
  if ((hi & COMPRESSED_HI) !== 0) {
    const { hostOffset, additionalSectors } = decodeCompressedDescriptor(hi, lo, clusterBits);
    return { kind: 'compressed', hostOffset, additionalSectors };
  }
  const hostOffset = entryHostOffset(hi, lo);
  const copied = (hi & COPIED_HI) !== 0;
  if (!extendedL2 && (lo & ZERO_LO) !== 0) return { kind: 'zero', hostOffset, copied };
  if (hostOffset === 0) return { kind: 'unallocated' };
  return { kind: 'normal', hostOffset, copied };
}

/** Encodes an L2 entry. */
export function encodeL2Entry(entry: L2Entry, clusterBits: number): { hi: number; lo: number } {
  switch (entry.kind) {
    case 'unallocated':
      return { hi: 0, lo: 0 };
    case 'compressed':
      return encodeCompressedDescriptor(entry.hostOffset, entry.additionalSectors, clusterBits);
    case 'zero':
    case 'normal': {
      const { hi, lo } = encodeHostOffset(entry.hostOffset);
      return {
        hi: (hi | (entry.copied ? COPIED_HI : 0)) >>> 0,
        lo: (lo | (entry.kind === 'zero' ? ZERO_LO : 0)) >>> 0,
      };
    }
  }
}

/** Reserved bits of a standard L2 entry (1..8, 56..61) that must be zero. */
export function l2ReservedBits(hi: number, lo: number): boolean {
  return (lo & 0x1fe) !== 0 || (hi & 0x3f000000) !== 0;
}

/**
 * Compressed cluster descriptor: with x = 62 - (cluster_bits - 8), bits 0..x-1 are the host byte offset and
 * bits x..61 the number of 512-byte sectors beyond the first. x is 49..61, so the offset always spans lo and part
 * of hi; the sector count sits in hi only.
 */
export function decodeCompressedDescriptor(hi: number, lo: number, clusterBits: number): { hostOffset: number; additionalSectors: number } {
  const offsetBitsInHi = 62 - (clusterBits - 8) - 32;
  const hiOffset = hi & ((1 << offsetBitsInHi) - 1);
  if (hiOffset > 0x1fffff) throw new Qcow2Error('BAD_L2_ENTRY', 'compressed cluster offset is larger than 2^53');
  const hostOffset = hiOffset * TWO_32 + (lo >>> 0);
  const additionalSectors = (hi & 0x3fffffff) >>> offsetBitsInHi;
  return { hostOffset, additionalSectors };
}

/** Encodes the compressed cluster descriptor (host offset and sector count) of an L2 entry. */
export function encodeCompressedDescriptor(hostOffset: number, additionalSectors: number, clusterBits: number): { hi: number; lo: number } {
  const offsetBitsInHi = 62 - (clusterBits - 8) - 32;
  const maxSectors = 2 ** (clusterBits - 8) - 1;
  if (additionalSectors < 0 || additionalSectors > maxSectors) throw new RangeError(`compressed sector count ${additionalSectors} out of range`);
  const hiOffset = Math.floor(hostOffset / TWO_32);
  if (hiOffset >= 2 ** offsetBitsInHi) throw new RangeError(`compressed cluster offset ${hostOffset} out of range`);
  return { hi: (COMPRESSED_HI | (additionalSectors << offsetBitsInHi) | hiOffset) >>> 0, lo: hostOffset >>> 0 };
}

/** Bytes a compressed cluster's stream may occupy from its offset: up to the end of its last 512-byte sector. */
export function compressedSpan(hostOffset: number, additionalSectors: number): number {
  return (additionalSectors + 1) * 512 - (hostOffset % 512);
}

/**
 * The second word of an extended L2 entry: bits 0..31 "subcluster allocated", bits 32..63 "subcluster reads as
 * zeros". As halves: lo = allocation bitmap, hi = zero bitmap.
 */
export interface SubclusterBitmap {
  allocated: number;
  zero: number;
}

/** Decodes the subcluster allocation bitmap of an extended L2 entry. */
export function decodeSubclusterBitmap(hi: number, lo: number): SubclusterBitmap {
  return { allocated: lo >>> 0, zero: hi >>> 0 };
}
