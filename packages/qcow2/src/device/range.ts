import { Qcow2Error } from '../errors.js';

export function checkRange(device: { filename: string; size: number }, offset: number, length: number): void {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > device.size) {
    throw new Qcow2Error('OUT_OF_RANGE', `range [${offset}, ${offset + length}) lies outside the ${device.size}-byte device`, { file: device.filename });
  }
}
