/**
 * Holes of sparse files through lseek(SEEK_DATA/SEEK_HOLE), which Node does not expose: the native helper
 * (native-addon.ts) provides the two calls. Without it, fileDataRegions returns undefined and callers treat every
 * byte as data.
 */
import type { StorageRegion } from '../io/storage.js';
import { nativeAddon, type NativeAddon } from './native-addon.js';

type SeekHoleAddon = Pick<NativeAddon, 'seekData' | 'seekHole'>;

/**
 * Most regions one call returns. A file fragmented past this is walked only that far; the rest of the range is
 * reported as one data region ("may hold data": reading it is always correct, only slower). Callers ask in
 * windows, so the next window picks up the walk.
 */
export const MAX_REGIONS = 65_536;

function loadAddon(): SeekHoleAddon | null {
  return nativeAddon();
}

/** Whether holes can be found: 'native' with the addon loaded, 'none' when everything reads as data. */
export function sparseSupport(): 'native' | 'none' {
  return loadAddon() ? 'native' : 'none';
}

function push(out: StorageRegion[], offset: number, length: number, hole: boolean): void {
  if (length <= 0) return;
  const last = out[out.length - 1];
  if (last && last.hole === hole && last.offset + last.length === offset) last.length += length;
  else out.push({ offset, length, hole });
}

/**
 * Data and hole regions of [offset, offset+length) of the open file `fd` whose size is `fileSize`: in order,
 * adjacent regions of the same kind merged, covering the range exactly. Bytes at or past `fileSize` are holes
 * (they read as zeros). Returns undefined when the addon is unavailable, and a single data region when the file
 * system cannot tell (EINVAL/ENOTSUP from lseek). At most MAX_REGIONS (or `maxRegions`) regions: past that, the
 * unwalked rest of the range is one data region.
 */
export function fileDataRegions(
  fd: number,
  offset: number,
  length: number,
  fileSize: number,
  maxRegions = MAX_REGIONS,
): StorageRegion[] | undefined {
  const native = loadAddon();
  if (!native) return undefined;
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
    throw new RangeError(`bad range: offset ${offset}, length ${length}`);
  }
  const out: StorageRegion[] = [];
  if (length === 0) return out;
  const end = offset + length;
  const limit = Math.min(end, Math.max(fileSize, 0));
  const cap = Math.max(2, maxRegions);

  let pos = offset;
  try {
    while (pos < limit) {
      // An iteration adds up to two regions (hole, data) and always ends on data, into which the unwalked rest
      // (reported as data) merges; one more slot stays free for the hole past EOF.
      if (out.length + 3 > cap) {
        push(out, pos, limit - pos, false);
        pos = limit;
        break;
      }
      const data = native.seekData(fd, pos);
      if (data < 0 || data >= limit) {
        // Only hole from here up to the end of the file (or of the range).
        push(out, pos, limit - pos, true);
        pos = limit;
        break;
      }
      push(out, pos, data - pos, true);
      let hole = native.seekHole(fd, data);
      // -1 (the file shrank under us) or past our notion of its size (it grew): what we read ends at `limit`.
      if (hole < 0 || hole > limit) hole = limit;
      if (hole <= data) hole = Math.min(data + 1, limit); // never stall on a confused file system
      push(out, data, hole - data, false);
      pos = hole;
    }
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code !== 'EINVAL' && code !== 'ENOTSUP' && code !== 'EOPNOTSUPP' && code !== 'ESPIPE') throw error;
    // The file system has no SEEK_DATA/SEEK_HOLE (or not for this kind of file): all of it may be data.
    out.length = 0;
    push(out, offset, limit - offset, false);
    pos = limit;
  }
  // Past the end of the file: a hole (reads as zeros).
  push(out, Math.max(pos, offset), end - Math.max(pos, offset), true);
  return out;
}
