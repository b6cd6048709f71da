import type { BlockDevice, Extent } from '../device/block-device.js';

/** Extents are asked for in windows this large, so a walk over any image holds a bounded list at a time. */
export const EXTENT_WINDOW = 8 * 1024 * 1024 * 1024;

/**
 * Walks the extents of [offset, offset+length) window by window, merging extents across window edges so callers
 * see the same extents as one big question would give.
 */
export async function* walkExtents(device: BlockDevice, offset = 0, length = device.size - offset): AsyncGenerator<Extent> {
  const end = offset + length;
  let pending: Extent | undefined;
  for (let pos = offset; pos < end; pos += EXTENT_WINDOW) {
    const windowLength = Math.min(EXTENT_WINDOW, end - pos);
    for (const extent of await device.extents(pos, windowLength)) {
      if (pending !== undefined && mergeable(pending, extent)) {
        pending.length += extent.length;
        continue;
      }
      if (pending !== undefined) yield pending;
      pending = { ...extent };
    }
  }
  if (pending !== undefined) yield pending;
}

function mergeable(a: Extent, b: Extent): boolean {
  return (
    a.offset + a.length === b.offset &&
    a.kind === b.kind &&
    a.depth === b.depth &&
    a.hostFile === b.hostFile &&
    (a.compressed ?? false) === (b.compressed ?? false) &&
    (a.zeroData ?? false) === (b.zeroData ?? false) &&
    ((a.hostOffset === undefined && b.hostOffset === undefined) ||
      (a.hostOffset !== undefined && b.hostOffset !== undefined && a.hostOffset + a.length === b.hostOffset))
  );
}
