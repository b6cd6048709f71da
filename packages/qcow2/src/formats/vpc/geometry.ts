import { Qcow2Error } from '../../errors.js';

/**
 * VHD sizes. Virtual PC sized a disk by its CHS geometry (cylinders × heads × sectors per track), which cannot
 * express most byte counts, so qemu rounds a new disk up to the next size the geometry can express unless told
 * `force_size`; Hyper-V and Azure go by the footer's current_size instead, and Azure wants it a whole number of
 * MiB, hence `-o subformat=fixed,force_size` for Azure uploads. Reading, qemu picks one of the two by the
 * footer's creator application.
 */
export interface ChsGeometry {
  cylinders: number;
  heads: number;
  sectorsPerTrack: number;
}

const SECTOR = 512;
/** The largest geometry the footer can hold: 65535 × 16 × 255 sectors (about 127 GiB). */
export const MAX_GEOMETRY: ChsGeometry = { cylinders: 65535, heads: 16, sectorsPerTrack: 255 };
const MAX_GEOMETRY_SECTORS = 65535 * 16 * 255;
/** qemu's limit for a VHD (VHD_MAX_SECTORS): 2040 GiB. */
export const VHD_MAX_SECTORS = 0xff000000;

export function geometrySectors(chs: ChsGeometry): number {
  return chs.cylinders * chs.heads * chs.sectorsPerTrack;
}

/**
 * The geometry the VHD specification's appendix derives from a sector count (rounding down), with qemu's
 * change: from 65535 × 16 × 63 sectors on, 255 sectors per track and 16 heads, so that disks up to the largest
 * geometry get one.
 */
export function geometryFor(totalSectors: number): ChsGeometry {
  const sectors = Math.min(totalSectors, MAX_GEOMETRY_SECTORS);
  let sectorsPerTrack: number;
  let heads: number;
  let cylindersTimesHeads: number;
  if (sectors >= 65535 * 16 * 63) {
    sectorsPerTrack = 255;
    heads = 16;
    cylindersTimesHeads = Math.floor(sectors / sectorsPerTrack);
  } else {
    sectorsPerTrack = 17;
    cylindersTimesHeads = Math.floor(sectors / sectorsPerTrack);
    heads = Math.max(4, Math.ceil(cylindersTimesHeads / 1024));
    if (cylindersTimesHeads >= heads * 1024 || heads > 16) {
      sectorsPerTrack = 31;
      heads = 16;
      cylindersTimesHeads = Math.floor(sectors / sectorsPerTrack);
    }
    if (cylindersTimesHeads >= heads * 1024) {
      sectorsPerTrack = 63;
      heads = 16;
      cylindersTimesHeads = Math.floor(sectors / sectorsPerTrack);
    }
  }
  return { cylinders: Math.floor(cylindersTimesHeads / heads), heads, sectorsPerTrack };
}

export interface VhdSize {
  geometry: ChsGeometry;
  /** The disk's size in bytes: what the footer records and what readers will see. */
  bytes: number;
}

/**
 * The geometry and size of a new VHD asked to hold `requestedBytes` (qemu rounds the request up to whole
 * sectors first). Without force_size: the smallest geometry holding at least that many sectors, and the disk
 * becomes exactly that geometry's size; when only the largest geometry holds it, the footer's size counts.
 * With force_size: the largest geometry, and the requested size as it is.
 */
export function vhdSizeFor(requestedBytes: number, forceSize: boolean): VhdSize {
  const sectors = Math.ceil(requestedBytes / SECTOR);
  let geometry: ChsGeometry;
  if (forceSize) {
    geometry = MAX_GEOMETRY;
  } else {
    const wanted = Math.min(MAX_GEOMETRY_SECTORS, sectors);
    geometry = { cylinders: 0, heads: 0, sectorsPerTrack: 0 };
    for (let extra = 0; wanted > geometrySectors(geometry); extra++) geometry = geometryFor(wanted + extra);
  }
  const total = geometrySectors(geometry) === MAX_GEOMETRY_SECTORS ? sectors : geometrySectors(geometry);
  if (total > VHD_MAX_SECTORS) throw new Qcow2Error('SIZE_TOO_LARGE', 'Disk size is too large, max size is 2040 GiB');
  return { geometry, bytes: total * SECTOR };
}

/** Creator applications whose disks qemu sizes by the footer's current_size rather than by the geometry. */
const SIZED_BY_CURRENT_SIZE = ['win ', 'qem2', 'd2v ', 'CTXS', 'tap\0'];

/**
 * The virtual size qemu reads from a footer: the geometry's size for Virtual PC and old qemu disks, the
 * current_size for Hyper-V, Disk2vhd, XenServer and force_size disks, or when the geometry is the largest.
 */
export function vhdVirtualSize(footer: { creatorApp: string; currentSize: number } & ChsGeometry): number {
  const byGeometry = geometrySectors(footer) !== MAX_GEOMETRY_SECTORS && !SIZED_BY_CURRENT_SIZE.includes(footer.creatorApp);
  const sectors = byGeometry ? geometrySectors(footer) : Math.floor(footer.currentSize / SECTOR);
  if (!(sectors <= VHD_MAX_SECTORS)) throw new Qcow2Error('UNSUPPORTED_FEATURE', `VHD disk of ${sectors} sectors is larger than 2040 GiB`);
  return sectors * SECTOR;
}
