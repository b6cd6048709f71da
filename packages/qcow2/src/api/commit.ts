import type { ImageFormat } from '../device/block-device.js';
import { untrustedGate } from '../device/open-policy.js';
import { commitImage, type CommitResult } from '../ops/commit.js';
import type { Host } from './host.js';

/** Options of {@link commit}. */
export interface CommitOptions {
  /** Opens the image and its chain. */
  host: Host;
  /** The top image's format; probed when absent. */
  format?: ImageFormat;
  /**
   * The image to commit into (a name in the chain, as the overlay names it); default: the immediate backing
   * file. Implies `drop`, as in qemu-img.
   */
  base?: string;
  /** Leave the top image as it is instead of emptying it (`qemu-img commit -d`). */
  drop?: boolean;
  /** Refuse backing and data file references (see {@link OpenOptions.untrusted}). */
  untrusted?: boolean;
  /** Called as the copy advances. */
  onProgress?: (done: number, total: number) => void;
}

/**
 * Merges an overlay down into its backing file (`qemu-img commit`): what the top image (and any image between
 * it and the base) holds is written into the base, then the top image is emptied so it reads the same as before
 * through its now updated base.
 *
 * @param path - The top image's name.
 * @param options - The host, and which base.
 * @returns Which image was written, and how many bytes were copied and zeroed.
 * @throws {@link Qcow2Error} `BAD_ARGUMENT` when the image has no backing file or the base is not in its chain,
 *   `READ_ONLY` when the base cannot be written, `BACKING_NOT_FOUND`, `IO_ERROR`.
 *
 * @example
 * ```ts
 * import { commit, create, open, read, write, memoryHost } from '@qcowkit/qcow2';
 * const host = memoryHost();
 * await (await create('base.qcow2', { host, size: 1 << 20 })).close();
 * const top = await create('top.qcow2', { host, size: 1 << 20, backingFile: 'base.qcow2', backingFormat: 'qcow2' });
 * await write(top, new Uint8Array([5]), 0);
 * await top.close();
 * await commit('top.qcow2', { host });
 * await using base = await open('base.qcow2', { host });
 * console.log((await read(base, 0, 1))[0]); // 5
 * ```
 */
export function commit(path: string, options: CommitOptions): Promise<CommitResult> {
  const { host, untrusted, ...rest } = options;
  return commitImage(path, {
    ...rest,
    hostFiles: host.files,
    ...(host.codecs === undefined ? {} : { codecs: host.codecs }),
    ...(untrusted ? { gate: untrustedGate } : {}),
  });
}
