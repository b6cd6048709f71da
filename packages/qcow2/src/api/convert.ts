import type { CreateQcow2Options } from '../engine/create-image.js';
import { createQcow2, validateCreateOptions } from '../engine/create-image.js';
import { Qcow2Device } from '../device/qcow2-device.js';
import { Qcow2Error } from '../errors.js';
import { convertToQcow2 } from '../ops/convert-to-qcow2.js';
import { convertToRaw } from '../ops/convert-to-raw.js';
import { createFile } from './create.js';
import type { Host } from './host.js';
import type { Image } from './image.js';
import { open } from './open.js';
import { portableCompressor } from './portable-compressor.js';

/** Options of {@link convert}: the target format, and for qcow2 targets the options of `qemu-img create`. */
export interface ConvertOptions extends Omit<CreateQcow2Options, 'size' | 'backingFile' | 'backingFormat'> {
  /** Where the target is created; defaults to the source's host. */
  host?: Host;
  /** The target's format: `'qcow2'` (default) or `'raw'`. */
  format?: 'qcow2' | 'raw';
  /** Write compressed clusters (`qemu-img convert -c`), with the target's `compressionType`. */
  compress?: boolean;
  /** Called as the copy advances. */
  onProgress?: (done: number, total: number) => void;
}

/**
 * Copies what the guest sees of `source` (through its backing chain) into a new standalone image, as
 * `qemu-img convert` does: only allocated data is read, zero runs are left unallocated (raw targets get holes),
 * and with `compress` every cluster that shrinks is stored compressed.
 *
 * @param source - An open image (any chain: the target holds the merged result).
 * @param target - The new image's name, created through `options.host` (an existing file is replaced).
 * @param options - Target format and qcow2 options (cluster size, compression type, compress…).
 * @throws {@link Qcow2Error} `BAD_ARGUMENT` for options qemu-img refuses, `CODEC_UNAVAILABLE` for zlib
 *   compression on a host without node:zlib, `IO_ERROR`.
 *
 * @example
 * ```ts
 * import { convert, create, open, read, write, memoryHost } from '@qcowkit/qcow2';
 * const host = memoryHost();
 * await using source = await create('disk.qcow2', { host, size: 1 << 20 });
 * await write(source, new Uint8Array(65536).fill(9), 0);
 * await convert(source, 'small.qcow2', { compress: true, compressionType: 'zstd' });
 * await using copy = await open('small.qcow2', { host });
 * console.log((await read(copy, 0, 4)).join()); // 9,9,9,9
 * ```
 */
export async function convert(source: Image, target: string, options: ConvertOptions = {}): Promise<void> {
  const { host = source.host, format = 'qcow2', compress = false, onProgress, ...qcow2 } = options;
  if (host === undefined) throw new Qcow2Error('BAD_ARGUMENT', 'convert() needs a host to create the target', { file: target });
  const progress = onProgress === undefined ? {} : { onProgress };
  if (format === 'raw') {
    if (compress) throw new Qcow2Error('BAD_ARGUMENT', 'Compression not supported for this file format', { file: target });
    const storage = await createFile(host, target);
    try {
      await convertToRaw(source.device, storage, progress);
    } finally {
      await storage.close();
    }
    return;
  }
  const createOptions = { ...qcow2, size: source.virtualSize };
  validateCreateOptions(createOptions);
  const compressionType = qcow2.compressionType ?? 'zlib';
  const compressor = compress ? (host.compressor ?? portableCompressor)(compressionType, qcow2.clusterSize ?? 65536) : undefined;
  const storage = await createFile(host, target);
  try {
    await createQcow2(storage, createOptions);
    await storage.flush();
  } finally {
    await storage.close();
  }
  const output = await open(target, { host, format: 'qcow2', writable: true, cache: 'unsafe' });
  try {
    if (!(output.device instanceof Qcow2Device)) throw new Qcow2Error('BAD_ARGUMENT', 'target is not a qcow2 image', { file: target });
    await convertToQcow2(source.device, output.device, { ...progress, ...(compressor === undefined ? {} : { compress: compressor }) });
  } finally {
    await output.close();
  }
}
