import { compareDevices, type CompareResult } from '../ops/compare.js';
import type { Image } from './image.js';

/** Options of {@link compare}. */
export interface CompareOptions {
  /** Sizes and allocation must match too (`qemu-img compare -s`). */
  strict?: boolean;
  /** Called as the comparison advances. */
  onProgress?: (done: number, total: number) => void;
}

/**
 * Compares what two images show the guest, as `qemu-img compare` does: ranges both know to read as zeros are
 * skipped without reading; a difference is reported at the first differing 512-byte sector.
 *
 * @param a - An open image.
 * @param b - Another open image (any format, any chain).
 * @param options - Strict mode, progress.
 * @returns `{ identical: true, … }`, or where and why they differ.
 * @throws {@link Qcow2Error} `IO_ERROR`, `COMPRESSION_ERROR` while reading either image.
 *
 * @example
 * ```ts
 * import { compare, convert, create, open, write, memoryHost } from '@qcowkit/qcow2';
 * const host = memoryHost();
 * await using a = await create('a.qcow2', { host, size: 1 << 20 });
 * await write(a, new Uint8Array([1, 2, 3]), 512);
 * await convert(a, 'b.raw', { format: 'raw' });
 * await using b = await open('b.raw', { host });
 * console.log(await compare(a, b)); // { identical: true, sizeMismatch: false }
 * ```
 */
export function compare(a: Image, b: Image, options: CompareOptions = {}): Promise<CompareResult> {
  return compareDevices(a.device, b.device, options);
}
