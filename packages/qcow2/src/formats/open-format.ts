import type { BlockDevice, ImageFormat } from '../device/block-device.js';
import type { HostFiles, ReferenceGate } from '../device/host-files.js';
import type { CompressionCodecs } from '../engine/compression.js';
import type { Storage } from '../io/storage.js';
import { Qcow2Error } from '../errors.js';
import { VmdkDevice } from './vmdk/vmdk-device.js';
import { VpcDevice } from './vpc/vpc-device.js';

/** What opening an image of these formats may need: other files (VMDK extents, through the gate) and codecs. */
export interface FormatOpenContext {
  hostFiles?: HostFiles;
  gate?: ReferenceGate;
  codecs?: CompressionCodecs;
}

/** Opens a VHD, VMDK or VHDX image (read-only) from its storage. */
export async function openFormatDevice(
  format: Exclude<ImageFormat, 'raw' | 'qcow2'>,
  storage: Storage,
  filename: string,
  context: FormatOpenContext = {},
): Promise<BlockDevice> {
  switch (format) {
    case 'vpc':
      return VpcDevice.open(storage, filename);
    case 'vmdk':
      return VmdkDevice.open(storage, filename, context);
    default:
      throw new Qcow2Error('UNKNOWN_FORMAT', `format ${format} is not supported yet`, { file: filename });
  }
}
