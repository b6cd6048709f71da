/**
 * @qcowkit/qcow2/node: the Node host. `nodeHost` gives the public operations the local file system (and
 * http(s) URLs, read with Range requests), node:zlib for compressed clusters, and the native sparse-file helper
 * when it is installed.
 *
 * @packageDocumentation
 */
import type { Host } from '../api/host.js';
import type { BlockDevice, ImageFormat } from '../device/block-device.js';
import type { ReferenceGate } from '../device/host-files.js';
import { openImage } from '../device/open-image.js';
import { nodeCodecs } from './node-codecs.js';
import { nodeHostFiles } from './node-host-files.js';

export { FileStorage, useBlockingFileIo } from './file-storage.js';
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

/** Opens an image file and its chain with Node's file system and codecs. */
export function openImageFile(
  filename: string,
  options: { format?: ImageFormat; gate?: ReferenceGate; openBacking?: boolean; writable?: boolean; cache?: 'writeback' | 'unsafe' } = {},
): Promise<BlockDevice> {
  return openImage(filename, { hostFiles: nodeHostFiles, codecs: nodeCodecs, ...options });
}
