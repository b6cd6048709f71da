import type { ImageSink } from '../device/image-sink.js';
import type { Storage } from '../io/storage.js';
import { createVhdx, vhdxCreateSizes, type VhdxCreateOptions } from './vhdx/vhdx-sink.js';
import { createVmdk, vmdkCreatedSize, type VmdkCreateOptions } from './vmdk/vmdk-sink.js';
import { createVpc, vpcCreatedSize, type VpcCreateOptions } from './vpc/vpc-sink.js';

/** A new image of a front-to-back format, and its format's options. */
export type NewImageOptions = ({ format: 'vpc' } & VpcCreateOptions) | ({ format: 'vmdk' } & VmdkCreateOptions) | ({ format: 'vhdx' } & VhdxCreateOptions);

/** Starts a new VHD, VMDK or VHDX image in `storage` (emptied first); fill it through the returned sink. */
export function createImageSink(storage: Storage, options: NewImageOptions, filename = storage.name): Promise<ImageSink> {
  switch (options.format) {
    case 'vpc':
      return createVpc(storage, options, filename);
    case 'vmdk':
      return createVmdk(storage, options, filename);
    case 'vhdx':
      return createVhdx(storage, options, filename);
  }
}

/** The virtual size a new image gets for these options (formats round the size up their own ways). */
export function createdSize(options: NewImageOptions): number {
  switch (options.format) {
    case 'vpc':
      return vpcCreatedSize(options);
    case 'vmdk':
      return vmdkCreatedSize(options.size);
    case 'vhdx':
      return vhdxCreateSizes(options).size;
  }
}
