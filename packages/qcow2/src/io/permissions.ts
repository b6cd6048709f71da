/**
 * qemu's block permissions, as a storage that can lock (a local file) takes and refuses them for an open image.
 * The values are qemu's bits (BLK_PERM_*), so bit i is locked at byte 100 + i (taken) and 200 + i (not shared)
 * of the file; see src/node/image-locks.ts for the protocol and device/image-permissions.ts for which open asks
 * for which set.
 */
/** Reads see consistent data (qemu's BLK_PERM_CONSISTENT_READ; lock bytes 100 and 200). */
export const PERM_CONSISTENT_READ = 1;
/** Writes change the data (BLK_PERM_WRITE; bytes 101 and 201). */
export const PERM_WRITE = 2;
/** Writes that leave the data as it was, as a copy-on-read does (BLK_PERM_WRITE_UNCHANGED; bytes 102 and 202). */
export const PERM_WRITE_UNCHANGED = 4;
/** Changes the size (BLK_PERM_RESIZE; bytes 103 and 203). */
export const PERM_RESIZE = 8;
/** Every permission. */
export const PERM_ALL = PERM_CONSISTENT_READ | PERM_WRITE | PERM_WRITE_UNCHANGED | PERM_RESIZE;

/** The names qemu prints for each bit, in bit order ("Failed to get \"write\" lock"). */
export const PERMISSION_NAMES = ['consistent read', 'write', 'write unchanged', 'resize'] as const;

/** What an open of a file takes (`perm`) and what it lets others take at the same time (`shared`). */
export interface FilePermissions {
  perm: number;
  shared: number;
}

/** Nothing taken, everything shared: the state of a file opened without locks (qemu-img info -U). */
export const NO_PERMISSIONS: FilePermissions = { perm: 0, shared: PERM_ALL };
