import { COMPRESSED_HI, COPIED_HI, HOST_OFFSET_HI_MASK, HOST_OFFSET_LO_MASK, L2_RESERVED_HI } from '../format/table-entries.js';

/**
 * The check's common cases as synchronous scans over whole tables (check.ts): small functions the JIT compiles
 * tightly, called once per table or refcount block instead of doing this work inside the async per-entry loops.
 * Each scan stops at the first entry that needs the general path (a message, a repair, anything unusual) and
 * returns its index; the caller handles that entry and calls the scan again after it.
 */

const TWO_32 = 0x100000000;

/** Running state of the active L1's fragmentation statistics, shared with the general path. */
export interface ClusterRun {
  /** Host offset the next data cluster must have to be contiguous (0: none yet). */
  next: number;
  allocated: number;
  fragmented: number;
}

/**
 * Counts the plain data clusters of a standard L2 table from entry `from` on: no flag but COPIED, no reserved bit,
 * cluster aligned, inside the file, a counter that can take one more. Returns the first entry that is not one.
 */
export function countPlainDataClusters(
  table: DataView,
  from: number,
  entries: number,
  clusterBits: number,
  fileSize: number,
  counts: Uint32Array,
  countBelow: number,
  run: ClusterRun | undefined,
): number {
  const clusterSize = 2 ** clusterBits;
  const clustersPer4G = 2 ** (32 - clusterBits);
  // Compressed or reserved bits in the high half; in the low half, the zero flag, reserved bits or an offset
  // that is not cluster aligned: all for the general path.
  const notPlainHi = COMPRESSED_HI | L2_RESERVED_HI;
  const notPlainLo = clusterSize - 1;
  for (let i = from; i < entries; i++) {
    const hi = table.getUint32(i * 8);
    const lo = table.getUint32(i * 8 + 4);
    if ((hi & notPlainHi) !== 0 || (lo & notPlainLo) !== 0 || (hi === 0 && lo === 0)) return i;
    const offset = (hi & HOST_OFFSET_HI_MASK) * TWO_32 + lo;
    const cluster = (hi & HOST_OFFSET_HI_MASK) * clustersPer4G + (lo >>> clusterBits);
    const count = counts[cluster]!;
    if (offset >= fileSize || count >= countBelow) return i;
    counts[cluster] = count + 1;
    if (run !== undefined) {
      run.allocated++;
      if (run.next !== 0 && offset !== run.next) run.fragmented++;
      run.next = offset + clusterSize;
    }
  }
  return entries;
}

/**
 * From entry `from` of a standard L2 table (no external data file), skips the entries whose COPIED flag is right
 * according to `stored` (the stored refcount of each cluster; `unknown` where it must be asked): compressed and
 * unallocated entries, and data clusters flagged COPIED exactly when their refcount is 1. Returns the first
 * entry to look at.
 */
export function skipRightCopiedFlags(table: DataView, from: number, entries: number, entryBytes: number, clusterBits: number, stored: Uint32Array, unknown: number): number {
  const clustersPer4G = 2 ** (32 - clusterBits);
  for (let i = from; i < entries; i++) {
    const hi = table.getUint32(i * entryBytes);
    if ((hi & COMPRESSED_HI) !== 0) continue;
    const lo = table.getUint32(i * entryBytes + 4);
    if ((hi & HOST_OFFSET_HI_MASK) === 0 && (lo & HOST_OFFSET_LO_MASK) === 0) continue;
    const cluster = (hi & HOST_OFFSET_HI_MASK) * clustersPer4G + (lo >>> clusterBits);
    const refcount = cluster < stored.length ? stored[cluster]! : unknown;
    const copied = (hi & COPIED_HI) !== 0;
    if (refcount === unknown || (refcount === 1) !== copied) return i;
  }
  return entries;
}

/**
 * Compares stored refcounts (`stored[i - base]`) with counted references (`counts[i]`) from cluster `from` up
 * to `end`, and returns the first cluster where they differ or the count may continue in the overflow map
 * (0xffffffff), or `end`. `highest.cluster` becomes the last cluster in use on the way.
 */
export function firstRefcountMismatch(stored: Uint32Array, base: number, counts: Uint32Array, from: number, end: number, highest: { cluster: number }): number {
  for (let i = from; i < end; i++) {
    const value = stored[i - base]!;
    const references = counts[i]!;
    if (value !== references || references === 0xffffffff) return i;
    if (value !== 0) highest.cluster = i;
  }
  return end;
}
