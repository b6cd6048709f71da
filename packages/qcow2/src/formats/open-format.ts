import type { BlockDevice, ImageFormat } from '../device/block-device.js';
import type { HostFiles, ReferenceGate } from '../device/host-files.js';
import type { CompressionCodecs } from '../engine/compression.js';
import type { Storage } from '../io/storage.js';
import { VhdxDevice } from './vhdx/vhdx-device.js';
import { VmdkDevice } from './vmdk/vmdk-device.js';
import { VpcDevice } from './vpc/vpc-device.js';

/** What opening an image of these formats may need: other files (VMDK extents, through the gate) and codecs. */
export interface FormatOpenContext {
  hostFiles?: HostFiles;
  gate?: ReferenceGate;
  codecs?: CompressionCodecs;
  /** Opened for qemu-img check (a VHDX whose blocks point past its end still opens). */
  forCheck?: boolean;
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
    case 'vhdx':
      return VhdxDevice.open(storage, filename, { forCheck: context.forCheck ?? false });
  }
}
