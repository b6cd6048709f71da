import type { BlockDevice, Extent } from '../device/block-device.js';
import { walkExtents } from './extent-walk.js';
import { firstDifference, firstNonZero } from '../io/zero-detect.js';

/** Whether two devices read the same, and where and why not. */
export type CompareResult =
  /** sizeMismatch: the sizes differ (qemu's warning), reported once the common part compared equal. */
  | { identical: true; sizeMismatch: boolean }
  | { identical: false; reason: 'content'; offset: number; sizeMismatch: boolean }
  | { identical: false; reason: 'size' }
  | { identical: false; reason: 'allocation'; offset: number };

/** Options of compareDevices (qemu-img compare). */
export interface CompareOptions {
  /** qemu-img compare -s: sizes and allocation state must match too. */
  strict?: boolean;
  onProgress?: (done: number, total: number) => void;
}

const CHUNK = 4 * 1024 * 1024;
const SECTOR = 512;

/**
 * Compares what two devices show the guest, as qemu-img compare does: ranges both devices know to read as zeros
 * are skipped without reading, a mismatch is reported at the start of the first differing 512-byte sector, and
 * the part of the larger device beyond the smaller one must read as zeros.
 */
export async function compareDevices(a: BlockDevice, b: BlockDevice, options: CompareOptions = {}): Promise<CompareResult> {
  const sizeMismatch = a.size !== b.size;
  if (sizeMismatch && options.strict) return { identical: false, reason: 'size' };
  const common = Math.min(a.size, b.size);
  const total = Math.max(a.size, b.size);
  const bufA = new Uint8Array(CHUNK);
  const bufB = new Uint8Array(CHUNK);

  const extentsA = walkExtents(a, 0, common);
  const extentsB = walkExtents(b, 0, common);
  let ea = (await extentsA.next()).value as Extent | undefined;
  let eb = (await extentsB.next()).value as Extent | undefined;
  let pos = 0;
  while (pos < common && ea !== undefined && eb !== undefined) {
    const end = Math.min(ea.offset + ea.length, eb.offset + eb.length);
    if (options.strict && statusOf(ea) !== statusOf(eb)) return { identical: false, reason: 'allocation', offset: pos };
    const zeroA = ea.kind !== 'data';
    const zeroB = eb.kind !== 'data';
    if (!(zeroA && zeroB)) {
      const mismatch = await compareRange(a, b, pos, end, zeroA, zeroB, bufA, bufB);
      // qemu warns about the size only once the common part compared equal.
      if (mismatch >= 0) return { identical: false, reason: 'content', offset: mismatch, sizeMismatch: false };
    }
    options.onProgress?.(end, total);
    pos = end;
    if (ea.offset + ea.length === end) ea = (await extentsA.next()).value as Extent | undefined;
    if (eb.offset + eb.length === end) eb = (await extentsB.next()).value as Extent | undefined;
  }
  if (sizeMismatch) {
    const larger = a.size > b.size ? a : b;
    for await (const extent of walkExtents(larger, common, total - common)) {
      if (extent.kind !== 'data') continue;
      const mismatch = await findNonZero(larger, extent.offset, extent.offset + extent.length, bufA);
      if (mismatch >= 0) return { identical: false, reason: 'content', offset: mismatch, sizeMismatch };
    }
  }
  options.onProgress?.(total, total);
  return { identical: true, sizeMismatch };
}

function statusOf(extent: Extent): string {
  return `${extent.kind}/${extent.zeroData === true}`;
}

async function compareRange(
  a: BlockDevice,
  b: BlockDevice,
  start: number,
  end: number,
  zeroA: boolean,
  zeroB: boolean,
  bufA: Uint8Array,
  bufB: Uint8Array,
): Promise<number> {
  if (zeroA) return findNonZero(b, start, end, bufB);
  if (zeroB) return findNonZero(a, start, end, bufA);
  for (let pos = start; pos < end; pos += CHUNK) {
    const n = Math.min(CHUNK, end - pos);
    const viewA = bufA.subarray(0, n);
    const viewB = bufB.subarray(0, n);
    await Promise.all([a.read(viewA, pos), b.read(viewB, pos)]);
    const diff = firstDifference(viewA, viewB);
    if (diff >= 0) return pos + Math.floor(diff / SECTOR) * SECTOR;
  }
  return -1;
}

async function findNonZero(device: BlockDevice, start: number, end: number, buffer: Uint8Array): Promise<number> {
  for (let pos = start; pos < end; pos += CHUNK) {
    const view = buffer.subarray(0, Math.min(CHUNK, end - pos));
    await device.read(view, pos);
    const index = firstNonZero(view);
    if (index >= 0) return pos + Math.floor(index / SECTOR) * SECTOR;
  }
  return -1;
}
