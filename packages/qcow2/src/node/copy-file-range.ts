/**
 * Kernel copies between two open files (copy_file_range), for copying runs of data without passing them through
 * user space; on file systems that share extents (XFS, Btrfs, NFS 4.2) the copy costs no space or time at all.
 * Through the native helper (native-addon.ts).
 *
 * Usage: call copyFileRange; on an error for which isCopyFallback() is true, copy with read/write instead (and
 * stop trying for that pair of files). Every other error is a real I/O error of the files.
 */
import { nativeAddon } from './native-addon.js';

/** Error codes that mean "this kernel, file system or pair of files cannot copy in the kernel; use read/write". */
const FALLBACK_CODES = new Set(['EXDEV', 'ENOSYS', 'EINVAL', 'EOPNOTSUPP', 'ENOTSUP']);

/** Whether copy_file_range can be tried at all (the native helper is loaded). */
export function kernelCopySupported(): boolean {
  return nativeAddon() !== null;
}

function notAvailable(): NodeJS.ErrnoException {
  return Object.assign(new Error('ENOSYS: copy_file_range is not available (the native helper is not loaded)'), { code: 'ENOSYS', errno: -38 });
}

/**
 * Copies up to `length` bytes from `fdIn` at `offsetIn` to `fdOut` at `offsetOut` in the kernel; neither file
 * position moves. Returns the bytes copied: `length`, or fewer when the input ended (or when an error came after
 * some bytes: the next call reports it). Throws an Error with `code` (see isCopyFallback) when nothing was copied;
 * without the native helper, ENOSYS.
 */
export function copyFileRange(fdIn: number, offsetIn: number, fdOut: number, offsetOut: number, length: number): Promise<number> {
  const addon = nativeAddon();
  if (addon === null) return Promise.reject(notAvailable());
  return addon.copyFileRangeAsync(fdIn, offsetIn, fdOut, offsetOut, length);
}

/** The same on the calling thread (for callers that already do blocking positional I/O). */
export function copyFileRangeSync(fdIn: number, offsetIn: number, fdOut: number, offsetOut: number, length: number): number {
  const addon = nativeAddon();
  if (addon === null) throw notAvailable();
  return addon.copyFileRange(fdIn, offsetIn, fdOut, offsetOut, length);
}

/** True for the errors after which a read/write copy should be used instead (EXDEV, ENOSYS, EINVAL, EOPNOTSUPP). */
export function isCopyFallback(error: unknown): boolean {
  return FALLBACK_CODES.has((error as NodeJS.ErrnoException | undefined)?.code ?? '');
}
