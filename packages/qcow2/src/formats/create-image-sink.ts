import type { ImageSink } from '../device/image-sink.js';
import type { Storage } from '../io/storage.js';
import { createVpc, type VpcCreateOptions } from './vpc/vpc-sink.js';

/** A new image of a front-to-back format, and its format's options. */
export type NewImageOptions = { format: 'vpc' } & VpcCreateOptions;

/** Starts a new VHD, VMDK or VHDX image in `storage` (emptied first); fill it through the returned sink. */
export function createImageSink(storage: Storage, options: NewImageOptions, filename = storage.name): Promise<ImageSink> {
  switch (options.format) {
    case 'vpc':
      return createVpc(storage, options, filename);
  }
}
