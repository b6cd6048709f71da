import type { ImageFormat } from '../device/block-device.js';
import { untrustedGate } from '../device/open-policy.js';
import { rebaseImage, type RebaseResult } from '../ops/rebase.js';
import type { Host } from './host.js';

/** Options of {@link rebase}. */
export interface RebaseOptions {
  /** Opens the image and both chains. */
  host: Host;
  /** The image's format; probed when absent. */
  format?: ImageFormat;
  /** The new backing file's name, stored as given (relative to the image's directory); `''` makes the image standalone. */
  backingFile: string;
  /** The new backing file's format; required with a backing file (qemu-img 7.2 requires it too). */
  backingFormat?: ImageFormat;
  /** Only rewrite the reference, copying nothing (`qemu-img rebase -u`): for a backing file moved or renamed. */
  unsafe?: boolean;
  /** Refuse backing and data file references (see {@link OpenOptions.untrusted}). */
  untrusted?: boolean;
  /** Called as the comparison advances. */
  onProgress?: (done: number, total: number) => void;
}

/**
 * Puts an image on a new backing file (`qemu-img rebase`) without changing what the guest reads: every range
 * where the old and the new chains differ is copied into the image first, then the reference is switched.
 *
 * @param path - The image's name (opened for writing).
 * @param options - The host, the new backing file and its format.
 * @returns How many bytes were compared and copied.
 * @throws {@link Qcow2Error} `BAD_ARGUMENT` without `backingFormat`, `BACKING_NOT_FOUND` when the new backing
 *   file cannot be opened, `BACKING_LOOP` when it contains the image itself, `IO_ERROR`.
 *
 * @example
 * ```ts
 * import { create, open, rebase, read, write, memoryHost } from '@qcowkit/qcow2';
 * const host = memoryHost();
 * const base = await create('base.qcow2', { host, size: 1 << 20 });
 * await write(base, new Uint8Array([7]), 0);
 * await base.close();
 * await (await create('top.qcow2', { host, size: 1 << 20, backingFile: 'base.qcow2', backingFormat: 'qcow2' })).close();
 * await rebase('top.qcow2', { host, backingFile: '' }); // standalone, still reads 7
 * await using top = await open('top.qcow2', { host });
 * console.log(top.backingFile, (await read(top, 0, 1))[0]); // undefined 7
 * ```
 */
export function rebase(path: string, options: RebaseOptions): Promise<RebaseResult> {
  const { host, untrusted, backingFile, ...rest } = options;
  return rebaseImage(path, {
    ...rest,
    backing: backingFile,
    hostFiles: host.files,
    ...(host.codecs === undefined ? {} : { codecs: host.codecs }),
    ...(untrusted ? { gate: untrustedGate } : {}),
  });
}
