import { Qcow2Device } from '../device/qcow2-device.js';
import { Qcow2Error } from '../errors.js';
import type { Image } from './image.js';

/** The qcow2 device behind `image`, writable: what the snapshot-changing operations need. */
export function writableQcow2(image: Image, what: string): Qcow2Device {
  const device = image.device;
  if (!(device instanceof Qcow2Device)) throw new Qcow2Error('BAD_ARGUMENT', `${what}: only qcow2 images have internal snapshots`, { file: image.path });
  if (!device.writable) throw new Qcow2Error('READ_ONLY', `${what}: the image must be opened with writable: true`, { file: image.path });
  return device;
}
