import { Qcow2Error } from '../errors.js';
import { entryHostOffset } from './table-entries.js';

/**
 * A persistent bitmap's table (qcow2 spec, "Bitmap table"): one u64 per cluster of bitmap data. Bits 9..55
 * are the offset of a data cluster; with offset 0, bit 0 says the whole cluster of bits is 1 (set) or 0. Bits
 * 1..8 and 56..63 are reserved, and bit 0 too when there is an offset. Bitmap data is little-endian by bit:
 * bit i of the bitmap is bit (i % 8) of byte (i / 8), and bit i covers guest bytes [i * granularity,
 * (i + 1) * granularity).
 */
export type BitmapTableEntry = { kind: 'zeros' } | { kind: 'ones' } | { kind: 'data'; offset: number };

const TWO_32 = 0x100000000;
/** Reserved bits of a bitmap table entry: 56..63 (high half) and 1..8 (low half). */
const RESERVED_HI = 0xff000000;
const RESERVED_LO = 0x1fe;
/** Bit 0: with offset 0, the whole cluster of bits is set. */
const ALL_ONES_LO = 1;

/** Whether a bitmap table entry is one qemu accepts: no reserved bit, and an offset (if any) cluster aligned without bit 0. */
export function bitmapTableEntryValid(hi: number, lo: number, clusterSize: number): boolean {
  const offset = entryHostOffset(hi, lo);
  return (hi & RESERVED_HI) === 0 && (lo & RESERVED_LO) === 0 && (offset === 0 || ((lo & ALL_ONES_LO) === 0 && offset % clusterSize === 0));
}

/** Decodes entry `index` of a bitmap table, refusing reserved bits and unaligned offsets as qemu does. */
export function decodeBitmapTableEntry(view: DataView, index: number, clusterSize: number, bitmapName: string): BitmapTableEntry {
  const hi = view.getUint32(index * 8);
  const lo = view.getUint32(index * 8 + 4);
  const offset = entryHostOffset(hi, lo);
  if (!bitmapTableEntryValid(hi, lo, clusterSize)) {
    const raw = ((BigInt(hi) << 32n) | BigInt(lo >>> 0)).toString(16).padStart(16, '0');
    throw new Qcow2Error('BAD_BITMAP_DIRECTORY', `bitmap '${bitmapName}': invalid bitmap table entry ${index}: 0x${raw}`);
  }
  if (offset !== 0) return { kind: 'data', offset };
  return (lo & ALL_ONES_LO) !== 0 ? { kind: 'ones' } : { kind: 'zeros' };
}

/** Encodes entry `index` of a bitmap table. */
export function encodeBitmapTableEntry(view: DataView, index: number, entry: BitmapTableEntry): void {
  const offset = entry.kind === 'data' ? entry.offset : 0;
  view.setUint32(index * 8, Math.floor(offset / TWO_32));
  view.setUint32(index * 8 + 4, ((offset >>> 0) | (entry.kind === 'ones' ? ALL_ONES_LO : 0)) >>> 0);
}

/** Entries a bitmap of `granularity` over a disk of `virtualSize` bytes needs (qemu's bitmap table size). */
export function bitmapTableSize(virtualSize: number, granularity: number, clusterSize: number): number {
  const bits = Math.ceil(virtualSize / granularity);
  return Math.ceil(bits / (clusterSize * 8));
}

/** Whether bit `bit` of a data cluster is set. */
export function bitmapBit(data: Uint8Array, bit: number): boolean {
  return ((data[bit >>> 3]! >>> (bit & 7)) & 1) === 1;
}

/** Sets bits [from, to) of a data cluster. */
export function setBitmapBits(data: Uint8Array, from: number, to: number): void {
  for (let bit = from; bit < to; ) {
    if ((bit & 7) === 0 && bit + 8 <= to) {
      // Whole bytes at a time through the middle.
      const end = Math.floor(to / 8);
      data.fill(0xff, bit >>> 3, end);
      bit = end * 8;
      continue;
    }
    data[bit >>> 3] = data[bit >>> 3]! | (1 << (bit & 7));
    bit++;
  }
}
