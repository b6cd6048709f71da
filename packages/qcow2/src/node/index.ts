/** Node-only entry point (@qcowkit/qcow2/node): files, the file system as HostFiles, native codecs. */
import type { BlockDevice, ImageFormat } from '../device/block-device.js';
import type { ReferenceGate } from '../device/host-files.js';
import { openImage } from '../device/open-image.js';
import { nodeCodecs } from './node-codecs.js';
import { nodeHostFiles } from './node-host-files.js';

export { FileStorage, useBlockingFileIo } from './file-storage.js';
export { nodeHostFiles } from './node-host-files.js';
export { nodeCodecs } from './node-codecs.js';
export { clusterCompressor } from './cluster-compressor.js';

/** Opens an image file and its chain with Node's file system and codecs. */
export function openImageFile(
  filename: string,
  options: { format?: ImageFormat; gate?: ReferenceGate; openBacking?: boolean; writable?: boolean; cache?: 'writeback' | 'unsafe' } = {},
): Promise<BlockDevice> {
  return openImage(filename, { hostFiles: nodeHostFiles, codecs: nodeCodecs, ...options });
}
