import { Qcow2Error } from '../errors.js';

/**
 * Refcount block entries: `refcount_bits` wide (1..64), big-endian, packed LSB first within a byte for widths
 * below 8. Values are JS numbers; a 64-bit refcount above 2^53 is refused at decode.
 */
export function refcountEntriesPerBlock(clusterSize: number, refcountBits: number): number {
  return (clusterSize * 8) / refcountBits;
}

export function maxRefcount(refcountBits: number): number {
  return refcountBits >= 53 ? Number.MAX_SAFE_INTEGER : 2 ** refcountBits - 1;
}

export function getRefcount(block: DataView, index: number, refcountBits: number): number {
  switch (refcountBits) {
    case 8:
      return block.getUint8(index);
    case 16:
      return block.getUint16(index * 2);
    case 32:
      return block.getUint32(index * 4);
    case 64: {
      const hi = block.getUint32(index * 8);
      const lo = block.getUint32(index * 8 + 4);
      if (hi > 0x1fffff) throw new Qcow2Error('BAD_HEADER', 'refcount larger than 2^53');
      return hi * 0x100000000 + lo;
    }
    default: {
      // 1, 2 or 4 bits: entry i sits in byte (i*bits)/8 at bit (i*bits)%8, least significant bits first.
      const bit = index * refcountBits;
      const byte = block.getUint8(bit >>> 3);
      return (byte >>> (bit & 7)) & ((1 << refcountBits) - 1);
    }
  }
}

const MAX_BY_WIDTH: Record<number, number> = { 1: 1, 2: 3, 4: 15, 8: 255, 16: 65535, 32: 4294967295, 64: Number.MAX_SAFE_INTEGER };

export function setRefcount(block: DataView, index: number, refcountBits: number, value: number): void {
  if (value < 0 || value > MAX_BY_WIDTH[refcountBits]!) throw new RangeError(`refcount ${value} does not fit in ${refcountBits} bits`);
  switch (refcountBits) {
    case 8:
      block.setUint8(index, value);
      return;
    case 16:
      block.setUint16(index * 2, value);
      return;
    case 32:
      block.setUint32(index * 4, value);
      return;
    case 64:
      block.setUint32(index * 8, Math.floor(value / 0x100000000));
      block.setUint32(index * 8 + 4, value >>> 0);
      return;
    default: {
      const bit = index * refcountBits;
      const mask = ((1 << refcountBits) - 1) << (bit & 7);
      const byte = block.getUint8(bit >>> 3);
      block.setUint8(bit >>> 3, (byte & ~mask) | ((value << (bit & 7)) & mask));
    }
  }
}
