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
/** Host offset bits 32..55, in the high half (hi bits 0..23). The same in L1, L2, refcount and bitmap tables. */
export const HOST_OFFSET_HI_MASK = 0x00ffffff;
/** Host offset bits 9..31, in the low half. */
export const HOST_OFFSET_LO_MASK = 0xfffffe00;
/** Reserved bits of an L1 entry: 0..8 (lo) and 56..62 (hi); qemu's L1E_RESERVED_MASK. */
export const L1_RESERVED_HI = 0x7f000000;
export const L1_RESERVED_LO = 0x1ff;
/** Reserved bits of a standard L2 entry: 1..8 (lo) and 56..61 (hi); qemu's L2E_STD_RESERVED_MASK. */
export const L2_RESERVED_HI = 0x3f000000;
export const L2_RESERVED_LO = 0x1fe;

/** The host offset an L1 or L2 entry word points at. */
export function entryHostOffset(hi: number, lo: number): number {
  return (hi & HOST_OFFSET_HI_MASK) * TWO_32 + ((lo & HOST_OFFSET_LO_MASK) >>> 0);
}

/** Encodes a host offset into an L1/L2 entry word. */
export function encodeHostOffset(hostOffset: number): { hi: number; lo: number } {
  return { hi: Math.floor(hostOffset / TWO_32) & HOST_OFFSET_HI_MASK, lo: (hostOffset >>> 0) & HOST_OFFSET_LO_MASK };
}

/**
 * Writes the first word of an L1 entry, or of an L2 entry for an allocated cluster with no other flag, at byte
 * `at` of a table: `hostOffset` (cluster aligned) and the COPIED flag.
 */
export function setTableEntry(view: DataView, at: number, hostOffset: number, copied: boolean): void {
  view.setUint32(at, ((copied ? COPIED_HI : 0) | Math.floor(hostOffset / TWO_32)) >>> 0);
  view.setUint32(at + 4, hostOffset >>> 0);
}

/** The high half of an entry with its COPIED flag set or cleared. */
export function withCopied(hi: number, copied: boolean): number {
  return (copied ? hi | COPIED_HI : hi & ~COPIED_HI) >>> 0;
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

/** Whether any reserved bit of an L1 entry (0..8, 56..62) is set. */
export function l1ReservedBits(hi: number, lo: number): boolean {
  return (lo & L1_RESERVED_LO) !== 0 || (hi & L1_RESERVED_HI) !== 0;
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

/** Whether any reserved bit of a standard L2 entry (1..8, 56..61) is set. */
export function l2ReservedBits(hi: number, lo: number): boolean {
  return (lo & L2_RESERVED_LO) !== 0 || (hi & L2_RESERVED_HI) !== 0;
}

/**
 * Compressed cluster descriptor: with x = 62 - (cluster_bits - 8), bits 0..x-1 are the host byte offset and
 * bits x..61 the number of 512-byte sectors beyond the first. x is 49..61, so the offset always spans lo and part
 * of hi; the sector count sits in hi only.
 */
export function decodeCompressedDescriptor(hi: number, lo: number, clusterBits: number): { hostOffset: number; additionalSectors: number } {
  const hiOffset = compressedOffsetHigh(hi, clusterBits);
  if (hiOffset > 0x1fffff) throw new Qcow2Error('BAD_L2_ENTRY', 'compressed cluster offset is larger than 2^53');
  const hostOffset = hiOffset * TWO_32 + (lo >>> 0);
  return { hostOffset, additionalSectors: compressedAdditionalSectors(hi, clusterBits) };
}

/** Bits of the compressed descriptor's host offset that sit in the high half (49..61 - 32). */
function compressedOffsetBitsInHi(clusterBits: number): number {
  return 62 - (clusterBits - 8) - 32;
}

/**
 * Bits 32 and up of a compressed cluster's host offset, as stored: above 0x1fffff the offset exceeds 2^53 (a
 * hostile entry; decodeCompressedDescriptor refuses it, check reports it).
 */
export function compressedOffsetHigh(hi: number, clusterBits: number): number {
  return hi & ((1 << compressedOffsetBitsInHi(clusterBits)) - 1);
}

/** The number of 512-byte sectors a compressed stream occupies beyond its first. */
export function compressedAdditionalSectors(hi: number, clusterBits: number): number {
  return (hi & 0x3fffffff) >>> compressedOffsetBitsInHi(clusterBits);
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
 * The host clusters a compressed stream's sectors touch, [first, first + count): the clusters its entry holds
 * one reference to each (qemu counts, and frees, a compressed cluster on every host cluster it touches).
 */
export function compressedHostClusters(hostOffset: number, additionalSectors: number, clusterSize: number): { first: number; count: number } {
  const first = Math.floor(hostOffset / clusterSize);
  const last = Math.floor((hostOffset + compressedSpan(hostOffset, additionalSectors) - 1) / clusterSize);
  return { first, count: last - first + 1 };
}

/**
 * The host clusters of the image file an L2 entry holds one reference to each, [first, first + count): every
 * cluster a compressed stream touches, or the data cluster (a preallocated zero cluster too). Undefined for an
 * unallocated entry, and for data in an external data file (its clusters are not counted in this file).
 */
export function l2EntryClusters(hi: number, lo: number, clusterBits: number, externalDataFile: boolean): { first: number; count: number } | undefined {
  if ((hi & COMPRESSED_HI) !== 0) {
    const { hostOffset, additionalSectors } = decodeCompressedDescriptor(hi, lo, clusterBits);
    return compressedHostClusters(hostOffset, additionalSectors, 2 ** clusterBits);
  }
  if (externalDataFile) return undefined;
  const host = entryHostOffset(hi, lo);
  return host === 0 ? undefined : { first: host / 2 ** clusterBits, count: 1 };
}

/**
 * The second word of an extended L2 entry: bits 0..31 "subcluster allocated", bits 32..63 "subcluster reads as
 * zeros". As halves: lo = allocation bitmap, hi = zero bitmap.
 */
export interface SubclusterBitmap {
  allocated: number;
  zero: number;
}

/** Byte offsets, in a 16-byte extended L2 entry, of its bitmaps: "reads as zeros" (bits 32..63) and "allocated" (0..31). */
export const ZERO_BITMAP_AT = 8;
export const ALLOC_BITMAP_AT = 12;
/** A subcluster bitmap with every subcluster of the cluster. */
export const ALL_SUBCLUSTERS = 0xffffffff;

/** The bitmap of subclusters first..last (inclusive, 0..31). */
export function subclusterRange(first: number, last: number): number {
  const width = last - first + 1;
  return width === 32 ? ALL_SUBCLUSTERS : (((1 << width) - 1) << first) >>> 0;
}

/** Writes both subcluster bitmaps of the extended L2 entry at byte `at`. */
export function setSubclusterBitmaps(view: DataView, at: number, zero: number, allocated: number): void {
  view.setUint32(at + ZERO_BITMAP_AT, zero >>> 0);
  view.setUint32(at + ALLOC_BITMAP_AT, allocated >>> 0);
}

/** Decodes the subcluster allocation bitmap of an extended L2 entry. */
export function decodeSubclusterBitmap(hi: number, lo: number): SubclusterBitmap {
  return { allocated: lo >>> 0, zero: hi >>> 0 };
}
