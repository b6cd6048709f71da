import type { BlockDevice, ImageFormat } from '../device/block-device.js';
import type { Storage } from '../io/storage.js';
import { VpcDevice } from './vpc/vpc-device.js';

/** Opens a VHD, VMDK or VHDX image (read-only) from its storage. */
export async function openFormatDevice(format: Exclude<ImageFormat, 'raw' | 'qcow2'>, storage: Storage, filename: string): Promise<BlockDevice> {
  switch (format) {
    case 'vpc':
      return VpcDevice.open(storage, filename);
    default:
      throw new Error(`format ${format} not yet implemented`);
  }
}
