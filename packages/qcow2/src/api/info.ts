import { backingChain, imageInfo, type ImageInfo } from '../ops/image-info.js';
import type { Image } from './image.js';

/** Options of {@link info}. */
export interface InfoOptions {
  /** Also describe each backing file, top first (`qemu-img info --backing-chain`). */
  backingChain?: boolean;
  /** Told about conditions qemu-img reports on stderr without failing (e.g. inconsistent bitmaps). */
  warn?: (message: string) => void;
}

/**
 * `qemu-img info --output=json` as data: the same keys, values and key order as qemu-img 7.2, so
 * `JSON.stringify(await info(image))` is what programs that parse qemu-img already read.
 *
 * @param image - An open image.
 * @param options - `backingChain: true` returns one entry per image of the chain.
 * @returns The image's info (or, with `backingChain`, the list of the chain's infos).
 * @throws {@link Qcow2Error} `BAD_BITMAP_DIRECTORY` and other format errors qemu-img info also fails on.
 *
 * @example
 * ```ts
 * import { create, info, memoryHost } from '@qcowkit/qcow2';
 * await using image = await create('disk.qcow2', { host: memoryHost(), size: 1 << 30 });
 * const { format, 'virtual-size': size, 'cluster-size': clusterSize } = await info(image);
 * console.log(format, size, clusterSize); // qcow2 1073741824 65536
 * ```
 */
export function info(image: Image, options?: InfoOptions & { backingChain?: false }): Promise<ImageInfo>;
export function info(image: Image, options: InfoOptions & { backingChain: true }): Promise<ImageInfo[]>;
export function info(image: Image, options: InfoOptions = {}): Promise<ImageInfo | ImageInfo[]> {
  const warn = options.warn === undefined ? {} : { warn: options.warn };
  return options.backingChain ? backingChain(image.device, warn) : imageInfo(image.device, warn);
}
