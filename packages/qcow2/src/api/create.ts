import { createQcow2, validateCreateOptions, type CreateQcow2Options } from '../engine/create-image.js';
import { Qcow2Error } from '../errors.js';
import type { Storage } from '../io/storage.js';
import type { Host } from './host.js';
import type { Image } from './image.js';
import { open } from './open.js';

/** Options of {@link create}: the size, the format, and for qcow2 the options of `qemu-img create -o`. */
export interface CreateOptions extends Omit<CreateQcow2Options, 'size'> {
  /** Where the file is created. */
  host: Host;
  /** Virtual size in bytes. */
  size: number;
  /** `'qcow2'` (default) or `'raw'`. */
  format?: 'qcow2' | 'raw';
}

/** The host's way of making a new, empty file. */
export async function createFile(host: Host, path: string): Promise<Storage> {
  if (host.files.create === undefined) throw new Qcow2Error('BAD_ARGUMENT', 'this host cannot create files', { file: path });
  return host.files.create(path);
}

/**
 * Creates an empty image, as `qemu-img create` does, and opens it for writing.
 *
 * Options are checked the way qemu-img checks them, before anything is written. A backing file is stored as
 * given (relative to the new image's directory) and is opened with the image, so it must exist.
 *
 * @param path - The new image's name (an existing file is replaced).
 * @param options - Size, format and qcow2 options (cluster size, compression type, backing file…).
 * @returns The new image, open for writing: close it when done.
 * @throws {@link Qcow2Error} `BAD_ARGUMENT` for options qemu-img refuses (with qemu's message), `IO_ERROR`
 *   when the file cannot be created, `BACKING_NOT_FOUND` when the backing file cannot be opened.
 *
 * @example
 * ```ts
 * import { create, memoryHost } from '@qcowkit/qcow2';
 * const host = memoryHost();
 * await using image = await create('disk.qcow2', { host, size: 64 << 20, clusterSize: 65536, compressionType: 'zstd' });
 * console.log(image.format, image.virtualSize); // qcow2 67108864
 * ```
 */
export async function create(path: string, options: CreateOptions): Promise<Image> {
  const { host, format = 'qcow2', ...qcow2 } = options;
  if (!Number.isSafeInteger(options.size) || options.size < 0) throw new Qcow2Error('BAD_ARGUMENT', `invalid size ${options.size}`, { file: path });
  if (format === 'qcow2') validateCreateOptions(qcow2);
  const storage = await createFile(host, path);
  try {
    if (format === 'qcow2') await createQcow2(storage, qcow2);
    else await storage.truncate(options.size);
    await storage.flush();
  } finally {
    await storage.close();
  }
  return open(path, { host, format, writable: true });
}
