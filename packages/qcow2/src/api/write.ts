import { isWritable } from '../device/block-device.js';
import { Qcow2Error } from '../errors.js';
import type { Image } from './image.js';

/**
 * Writes guest data into a writable image (the top of its chain; backing files are never written).
 *
 * Writes are ordered as qemu orders them (refcounts before the pointers that use them), so a crash at any
 * point only leaks clusters. What is cached reaches the file on `close()`: an image dropped without it loses
 * those writes (Node prints a warning when that happens).
 *
 * @param image - An image opened with `writable: true` (or made by {@link create}).
 * @param data - The bytes to write.
 * @param offset - Guest offset in bytes; the range must lie inside the virtual disk.
 * @throws {@link Qcow2Error} `READ_ONLY` when the image was opened read-only, `OUT_OF_RANGE`, `IO_ERROR`.
 *
 * @example
 * ```ts
 * import { create, write, map, memoryHost } from '@qcowkit/qcow2';
 * await using image = await create('disk.qcow2', { host: memoryHost(), size: 1 << 20 });
 * await write(image, new Uint8Array(65536).fill(0xab), 0);
 * for await (const entry of map(image)) console.log(entry.start, entry.length, entry.data); // 0 65536 true …
 * ```
 */
export async function write(image: Image, data: Uint8Array, offset: number): Promise<void> {
  if (!image.writable || !isWritable(image.device)) throw new Qcow2Error('READ_ONLY', 'image is open read-only', { file: image.path });
  await image.device.write(data, offset);
}
