/**
 * Which permissions each open of an image file takes and refuses to share, as qemu 7.2 computes them for the
 * same open (its block layer: the BlockBackend's request, passed through the raw driver or narrowed by the
 * qcow2 driver for its metadata). Measured with strace on qemu-img/qemu-io 7.2 (F_OFD_SETLK/F_OFD_GETLK bytes):
 *
 *   qcow2, reading (map, check, convert, compare, snapshot -l)   takes consistent-read; refuses write, resize
 *   qcow2, metadata only (info)                                 takes nothing;         refuses write, resize
 *   qcow2, writing (io, snapshot -c, resize, commit, rebase…)   takes read, write, resize; refuses write, resize
 *   raw, reading (map, check, compare, measure)                 takes consistent-read; shares everything
 *   raw, read as convert's source (BDRV_O_NO_SHARE)             takes consistent-read; refuses write, resize
 *   raw, writing (io, convert -n); resize adds resize           takes read, write;     shares everything
 *   raw, metadata only (info)                                   nothing at all
 *   raw as a backing file                                       takes consistent-read; shares everything
 *   an external data file                                       takes read (+ write, resize); refuses resize
 *   a file being created (create, convert's target)             takes write, resize;   refuses resize
 *   -U / --force-share (read-only opens only)                   shares everything; takes the same
 *
 * A qcow2 image refuses writers even to readers because its metadata must not change under it (so do qemu's
 * other format drivers: vpc, vmdk, vhdx). Backing files are opened like a reading top image of their format;
 * -U reaches down the chain.
 */
import {
  PERM_ALL,
  PERM_CONSISTENT_READ,
  PERM_RESIZE,
  PERM_WRITE,
  PERM_WRITE_UNCHANGED,
  type FilePermissions,
} from '../io/permissions.js';
import type { ImageFormat } from './block-device.js';

/** How the file is reached: the image named by the user, a backing file below it, or an external data file. */
export type LayerRole = 'top' | 'backing' | 'data-file';

/** What the open is for. All false: reading guest data, sharing what qemu-img shares for reading. */
export interface ImageAccess {
  /** Writes to the image (qemu's BDRV_O_RDWR). */
  write?: boolean;
  /** Changes a raw image's size (qemu-img resize); a writable qcow2 image always may. */
  resize?: boolean;
  /** Reads only metadata, never guest data (qemu-img info, BDRV_O_NO_IO). */
  metadataOnly?: boolean;
  /** Lets others write and resize meanwhile (qemu-img -U); only for opens that do not write. */
  forceShare?: boolean;
  /** Refuses other writers even on a raw image (qemu-img convert's sources, BDRV_O_NO_SHARE). */
  refuseWriters?: boolean;
}

/** A file being created and formatted (qemu's raw_co_create): written and resized, nobody else may resize it. */
export const CREATE_PERMISSIONS: FilePermissions = { perm: PERM_WRITE | PERM_RESIZE, shared: PERM_ALL & ~PERM_RESIZE };

const ALL_BUT_WRITERS = PERM_ALL & ~(PERM_WRITE | PERM_RESIZE);

/** The permissions an open of one file of an image takes; see the table above. */
export function layerPermissions(format: ImageFormat, role: LayerRole, access: ImageAccess = {}): FilePermissions {
  const read = access.metadataOnly ? 0 : PERM_CONSISTENT_READ;
  if (role === 'data-file') {
    return { perm: read | (access.write ? PERM_WRITE | PERM_RESIZE : 0), shared: access.forceShare ? PERM_ALL : PERM_ALL & ~PERM_RESIZE };
  }
  // Every format but raw has metadata of its own (qcow2, and vpc, vmdk, vhdx alike in qemu): writers refused.
  if (format !== 'raw') {
    return { perm: read | (access.write ? PERM_WRITE | PERM_RESIZE : 0), shared: access.forceShare ? PERM_ALL : ALL_BUT_WRITERS };
  }
  if (role === 'backing') return { perm: read, shared: PERM_ALL };
  const perm = read | (access.write ? PERM_WRITE : 0) | (access.resize ? PERM_RESIZE : 0);
  const refuse = access.refuseWriters && !access.forceShare;
  return { perm, shared: refuse ? PERM_CONSISTENT_READ | PERM_WRITE_UNCHANGED : PERM_ALL };
}

/** qemu refuses -U on an image opened for writing, in these words. */
export const FORCE_SHARE_WRITABLE_MESSAGE = 'force-share=on can only be used with read-only images';
