import { pushExtent, type Extent } from '../device/block-device.js';
import type { Storage } from '../io/storage.js';

/**
 * The extents of guest bytes stored as they are in a host file (a fixed VHD, a flat VMDK extent): data where
 * the file holds data, data known to read as zeros over its holes and past its end, as qemu reports them (the
 * format driver hands block status down to the file).
 */
export async function rawFileExtents(
  out: Extent[],
  file: { storage: Storage; size: number; name: string },
  guestOffset: number,
  fileOffset: number,
  length: number,
): Promise<void> {
  const inFile = Math.max(0, Math.min(length, file.size - fileOffset));
  const regions =
    inFile === 0 ? [] : file.storage.dataRegions === undefined ? [{ offset: fileOffset, length: inFile, hole: false }] : await file.storage.dataRegions(fileOffset, inFile);
  for (const region of regions) {
    const extent: Extent = { offset: guestOffset + region.offset - fileOffset, length: region.length, kind: 'data', depth: 0, hostOffset: region.offset, hostFile: file.name };
    if (region.hole) extent.zeroData = true;
    pushExtent(out, extent);
  }
  if (inFile < length) {
    pushExtent(out, { offset: guestOffset + inFile, length: length - inFile, kind: 'data', depth: 0, hostOffset: fileOffset + inFile, hostFile: file.name, zeroData: true });
  }
}
