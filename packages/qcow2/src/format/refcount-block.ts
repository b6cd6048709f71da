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

/**
 * The refcount of entry `index` without refusing anything: a 64-bit refcount above 2^53 is the nearest number
 * (qemu-img check reports such a value; it never uses it).
 */
export function getRefcountUnchecked(block: DataView, index: number, refcountBits: number): number {
  if (refcountBits === 64) return block.getUint32(index * 8) * 0x100000000 + block.getUint32(index * 8 + 4);
  return getRefcount(block, index, refcountBits);
}

/**
 * Entries [from, from + out.length) of a block, decoded into `out` in one synchronous loop (widths up to 32
 * bits): what a scan over every cluster of an image wants instead of a call per entry.
 */
export function getRefcounts(block: DataView, from: number, refcountBits: number, out: Uint32Array): void {
  const count = out.length;
  switch (refcountBits) {
    case 8:
      for (let i = 0; i < count; i++) out[i] = block.getUint8(from + i);
      return;
    case 16:
      for (let i = 0; i < count; i++) out[i] = block.getUint16((from + i) * 2);
      return;
    case 32:
      for (let i = 0; i < count; i++) out[i] = block.getUint32((from + i) * 4);
      return;
    case 1:
    case 2:
    case 4: {
      const mask = (1 << refcountBits) - 1;
      for (let i = 0; i < count; i++) {
        const bit = (from + i) * refcountBits;
        out[i] = (block.getUint8(bit >>> 3) >>> (bit & 7)) & mask;
      }
      return;
    }
    default:
      throw new RangeError(`getRefcounts: ${refcountBits}-bit refcounts are read one by one`);
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

/**
 * Adds `delta` to entries [from, to) of a block in one synchronous loop. Returns the first entry whose value
 * would leave [0, max] (the entries before it are changed, it and the rest are not), or -1.
 */
export function adjustRefcounts(block: DataView, from: number, to: number, refcountBits: number, delta: number, max: number): number {
  if (refcountBits === 16) {
    for (let i = from; i < to; i++) {
      const value = block.getUint16(i * 2) + delta;
      if (value < 0 || value > max) return i;
      block.setUint16(i * 2, value);
    }
    return -1;
  }
  for (let i = from; i < to; i++) {
    const value = getRefcount(block, i, refcountBits) + delta;
    if (value < 0 || value > max) return i;
    setRefcount(block, i, refcountBits, value);
  }
  return -1;
}

/** A block's entries as machine words to test against zero (a zero refcount is zero bytes whatever the order). */
export type RefcountWords = Uint8Array | Uint16Array | Uint32Array;

/** The block's bytes seen as whole entries, for widths of 8 bits or more (64-bit: two words per entry). */
export function refcountWords(bytes: Uint8Array, refcountBits: number): RefcountWords | undefined {
  if (refcountBits === 8) return bytes;
  if (refcountBits === 16 && bytes.byteOffset % 2 === 0) return new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.length / 2);
  if (refcountBits >= 32 && bytes.byteOffset % 4 === 0) return new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.length / 4);
  return undefined;
}

/**
 * The first entry in [from, to) whose refcount is zero in both blocks (`undefined`: a block that does not exist,
 * all zeros) when `free`, or non-zero in either when not `free`; `to` when there is none. Words per entry: 2 for
 * 64-bit refcounts, else 1.
 */
export function scanFree(a: RefcountWords | undefined, b: RefcountWords | undefined, from: number, to: number, wordsPerEntry: number, free: boolean): number {
  if (wordsPerEntry === 1 && a !== undefined && b === undefined) {
    // The common case (a block not changed yet): one array, one comparison per entry.
    for (let i = from; i < to; i++) if ((a[i] === 0) === free) return i;
    return to;
  }
  for (let i = from; i < to; i++) {
    let zero = true;
    for (let w = i * wordsPerEntry; w < (i + 1) * wordsPerEntry; w++) {
      if ((a !== undefined && a[w] !== 0) || (b !== undefined && b[w] !== 0)) zero = false;
    }
    if (zero === free) return i;
  }
  return to;
}
