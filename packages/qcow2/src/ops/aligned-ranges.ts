import type { BlockDevice } from '../device/block-device.js';
import { walkExtents } from './extent-walk.js';

/**
 * The ranges of `device` that hold data, widened to `alignment` (the target's cluster size) and merged, so a
 * converter reads whole target clusters and can tell a cluster that is all zeros from one that is not.
 */
export async function* alignedDataRanges(device: BlockDevice, alignment: number): AsyncGenerator<{ offset: number; length: number }> {
  let pending: { offset: number; length: number } | undefined;
  for await (const extent of walkExtents(device)) {
    if (extent.kind !== 'data' || extent.zeroData === true) continue;
    const start = Math.floor(extent.offset / alignment) * alignment;
    const end = Math.min(device.size, Math.ceil((extent.offset + extent.length) / alignment) * alignment);
    if (pending !== undefined && start <= pending.offset + pending.length) {
      pending.length = Math.max(pending.length, end - pending.offset);
      continue;
    }
    if (pending !== undefined) yield pending;
    pending = { offset: start, length: end - start };
  }
  if (pending !== undefined) yield pending;
}
