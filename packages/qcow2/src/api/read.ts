import { Qcow2Error } from '../errors.js';
import type { Image } from './image.js';

/**
 * Reads guest data: what the virtual disk holds at `offset`, through the backing chain (unallocated ranges read
 * from the backing file, or as zeros). Compressed clusters are decompressed with the host's codecs.
 *
 * @param image - An open image.
 * @param offset - Guest offset in bytes.
 * @param length - How many bytes; the range must lie inside the virtual disk.
 * @returns A new buffer of `length` bytes.
 * @throws {@link Qcow2Error} `OUT_OF_RANGE` past the end of the disk, `COMPRESSION_ERROR` or
 *   `CODEC_UNAVAILABLE` for compressed clusters that cannot be decoded, `IO_ERROR` from the host.
 *
 * @example
 * ```ts
 * import { create, read, write, memoryHost } from '@qcowkit/qcow2';
 * await using image = await create('disk.qcow2', { host: memoryHost(), size: 1 << 20 });
 * await write(image, new TextEncoder().encode('hello'), 4096);
 * console.log(new TextDecoder().decode(await read(image, 4096, 5))); // hello
 * ```
 */
export async function read(image: Image, offset: number, length: number): Promise<Uint8Array> {
  if (!Number.isSafeInteger(length) || length < 0) throw new Qcow2Error('OUT_OF_RANGE', `invalid length ${length}`, { file: image.path });
  const buffer = new Uint8Array(length);
  await image.device.read(buffer, offset);
  return buffer;
}
