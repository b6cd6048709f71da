import type { WritableBlockDevice } from '../device/block-device.js';
import type { Storage } from '../io/storage.js';
import { walkExtents } from './extent-walk.js';

const ZERO_CHUNK = 4 * 1024 * 1024;

/**
 * convert -n into an image that already holds data: qemu-img writes zeros wherever the source reads as zeros
 * (unless --target-is-zero says the target is blank). Converters here write only non-zero data, so the target's
 * own data is cleared first: every range of [0, length) that does not already read as zeros from this image
 * itself (its data, its zero-flagged but allocated clusters, and anything its backing file shows) is zeroed,
 * with unmap so the clusters are freed. Ranges that are unallocated at depth 0 are left alone.
 */
export async function clearQcow2Target(target: WritableBlockDevice, length: number): Promise<void> {
  const ranges: Array<{ offset: number; length: number }> = [];
  for await (const extent of walkExtents(target, 0, Math.min(length, target.size))) {
    const blank = (extent.kind === 'unallocated' && extent.depth === 0) || (extent.kind === 'zero' && extent.depth === 0 && extent.hostOffset === undefined);
    if (!blank) ranges.push({ offset: extent.offset, length: extent.length });
  }
  for (const range of ranges) await target.writeZeroes(range.offset, range.length, { unmap: true });
}

/** The same for a raw target: its data regions inside [0, length) are overwritten with zeros (holes stay holes). */
export async function clearRawTarget(target: Storage, length: number): Promise<void> {
  const end = Math.min(length, await target.size());
  if (end <= 0) return;
  const regions = target.dataRegions === undefined ? [{ offset: 0, length: end, hole: false }] : await target.dataRegions(0, end);
  const zeros = new Uint8Array(Math.min(ZERO_CHUNK, end));
  for (const region of regions) {
    if (region.hole) continue;
    for (let at = region.offset; at < region.offset + region.length; at += zeros.length) {
      await target.write(zeros.subarray(0, Math.min(zeros.length, region.offset + region.length - at)), at);
    }
  }
}
