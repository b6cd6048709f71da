import type { BlockDevice } from '../device/block-device.js';
import type { ImageSink } from '../device/image-sink.js';
import { copyGuestData, type ConvertToRawOptions } from './convert-to-raw.js';

export interface ConvertToSinkOptions extends Pick<ConvertToRawOptions, 'sparseSize' | 'onProgress' | 'rateLimiter'> {
  /** Make the finished image stable on disk (qemu-img's -t writeback and stricter); default true. */
  flush?: boolean;
}

/**
 * Fills a new front-to-back image (VHD, VMDK, VHDX) with the guest contents of `source`: the sink is handed the
 * source's non-zero data in increasing offset order (see copyGuestData) and leaves everything else unallocated,
 * then finishes the image.
 */
export async function convertToSink(source: BlockDevice, sink: ImageSink, options: ConvertToSinkOptions = {}): Promise<void> {
  await copyGuestData(source, sink, options);
  await sink.finish({ flush: options.flush ?? true });
  options.onProgress?.(source.size, source.size);
}
