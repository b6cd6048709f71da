/**
 * @qcowkit/qcow2/node: the Node host. `nodeHost` gives the public operations the local file system (and
 * http(s) URLs, read with Range requests), node:zlib for compressed clusters, and the native helper (image locks
 * as qemu takes them, holes of sparse files, kernel copies) prebuilt for linux-x64.
 *
 * @packageDocumentation
 */
import type { Host } from '../api/host.js';
import type { BlockDevice } from '../device/block-device.js';
import { openImage, type OpenImageOptions } from '../device/open-image.js';
import { nodeCodecs } from './node-codecs.js';
import { nodeHostFiles } from './node-host-files.js';

export { FileStorage, fileIoError, useBlockingFileIo, type FileOpenOptions } from './file-storage.js';
export { ImageLock, lockingSupport, LOCK_PERM_BASE, LOCK_SHARED_BASE } from './image-locks.js';
export { nativeAddon, nativeStatus, type NativeAddon, type NativeStatus, type NativeSource, type OfdLockType } from './native-addon.js';
export { copyFileRange, copyFileRangeSync, isCopyFallback, kernelCopySupported } from './copy-file-range.js';
export { nodeHostFiles } from './node-host-files.js';
export { nodeCodecs } from './node-codecs.js';
export { clusterCompressor } from './cluster-compressor.js';
export { grainCompressor } from './grain-compressor.js';
import { clusterCompressor } from './cluster-compressor.js';

/**
 * The Node host: files by path (and http(s) URLs), node:zlib codecs, and node:zlib/zstd compressors.
 *
 * @example
 * ```ts
 * import { info, open } from '@qcowkit/qcow2';
 * import { nodeHost } from '@qcowkit/qcow2/node';
 * await using image = await open('disk.qcow2', { host: nodeHost });
 * console.log(JSON.stringify(await info(image)));
 * ```
 */
export const nodeHost: Host = { files: nodeHostFiles, codecs: nodeCodecs, compressor: clusterCompressor };

/**
 * Opens an image file and its chain with Node's file system and codecs, locked against other processes as
 * qemu-img locks it (see OpenImageOptions: writable, forceShare, refuseWriters, resize).
 */
export function openImageFile(
  filename: string,
  options: Omit<OpenImageOptions, 'hostFiles' | 'codecs'> = {},
): Promise<BlockDevice> {
  return openImage(filename, { hostFiles: nodeHostFiles, codecs: nodeCodecs, ...options });
}
