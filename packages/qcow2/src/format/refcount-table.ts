import { Qcow2Error } from '../errors.js';
import { readU64, viewOf, writeU64 } from './struct.js';

/**
 * The refcount table: u64 entries, entry i the host offset of the refcount block that counts clusters
 * [i * n, (i + 1) * n) (n = refcountEntriesPerBlock), 0 when there is none (all those refcounts are 0). The
 * offset is cluster aligned; bits 0..8 are reserved (qemu's REFT_RESERVED_MASK).
 */

const TWO_32 = 0x100000000;
/** Reserved bits of a refcount table entry, in its low half. */
export const REFCOUNT_TABLE_RESERVED_LO = 0x1ff;

/** Table entries as stored, as u32 halves, reserved bits included: what check reports on. */
export interface RefcountTableEntries {
  hi: Uint32Array;
  lo: Uint32Array;
}

/** Splits table bytes into entries as stored (no validation: qemu-img check looks at everything itself). */
export function decodeRefcountTableEntries(bytes: Uint8Array): RefcountTableEntries {
  const entries = Math.floor(bytes.length / 8);
  const view = viewOf(bytes);
  const hi = new Uint32Array(entries);
  const lo = new Uint32Array(entries);
  for (let i = 0; i < entries; i++) {
    hi[i] = view.getUint32(i * 8);
    lo[i] = view.getUint32(i * 8 + 4);
  }
  return { hi, lo };
}

/** The refcount block offset an entry names, reserved bits left out (inexact above 2^53: check reports it). */
export function refcountBlockOffset(hi: number, lo: number): number {
  return hi * TWO_32 + ((lo & ~REFCOUNT_TABLE_RESERVED_LO) >>> 0);
}

/**
 * Decodes the table into block offsets (0: no block) for reading and writing: an offset above 2^53 or not
 * cluster aligned is refused.
 */
export function decodeRefcountTable(bytes: Uint8Array, clusterSize: number): number[] {
  const view = viewOf(bytes);
  const table: number[] = [];
  for (let i = 0; i < Math.floor(bytes.length / 8); i++) {
    const entry = readU64(view, i * 8, 'refcount table entry');
    const blockOffset = entry - (entry % (REFCOUNT_TABLE_RESERVED_LO + 1));
    if (blockOffset % clusterSize !== 0) {
      throw new Qcow2Error('MISALIGNED_OFFSET', `refcount block offset 0x${blockOffset.toString(16)} is not cluster aligned`);
    }
    table.push(blockOffset);
  }
  return table;
}

/**
 * Encodes a table of `bytes` bytes (whole clusters) whose entry i names block offset `offsets[i]` (missing or
 * undefined entries: no block).
 */
export function encodeRefcountTable(offsets: ReadonlyArray<number | undefined> | ReadonlyMap<number, number>, bytes: number): Uint8Array {
  const out = new Uint8Array(bytes);
  const view = viewOf(out);
  const entries = offsets instanceof Map ? offsets.entries() : (offsets as ReadonlyArray<number | undefined>).entries();
  for (const [index, offset] of entries) if (offset !== undefined && offset !== 0) writeU64(view, index * 8, offset);
  return out;
}

/** One table entry naming the block at `offset`, as written in place. */
export function encodeRefcountTableEntry(offset: number): Uint8Array {
  const out = new Uint8Array(8);
  writeU64(viewOf(out), 0, offset);
  return out;
}
