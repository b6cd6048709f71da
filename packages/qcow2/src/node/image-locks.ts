/**
 * qemu's image locking (block/file-posix.c), so qcowkit and qemu keep each other from changing an image the other
 * uses. Every lock is a shared (read) open-file-description lock on one byte of the image file:
 *   byte 100 + i  held while this open takes permission i,
 *   byte 200 + i  held while this open refuses to share permission i,
 * for i = 0 consistent read, 1 write, 2 write unchanged, 3 resize (io/permissions.ts). Taking permissions:
 *   1. lock the bytes of what is taken and refused, old and new together (nothing is given up yet);
 *   2. test, with an exclusive F_OFD_GETLK, that no other open holds 200 + i for a permission i now taken, nor
 *      100 + i for a permission i now refused: "Failed to get "write" lock" / "Failed to get shared "write" lock";
 *   3. on success unlock what is no longer taken or refused; on failure go back to the old set.
 * Shared locks never conflict with each other, so step 1 cannot fail against qemu; only the test decides.
 *
 * OFD locks belong to an open file description, so two opens of one file in this process would conflict with
 * each other (qemu shares one descriptor per image node for the same reason). Here every open of a file (by
 * device and inode) registers its permissions with one LockedFile, which holds the union of them on a
 * descriptor of its own; the test then sees only other processes. Locks live until the storage closes (or the
 * process ends: the kernel drops them with the descriptor).
 *
 * Without the native helper (QCOWKIT_NATIVE=off, no build and no prebuilt copy for the platform), or on a kernel
 * or file system without OFD locks, nothing is locked and one warning line goes to stderr, once per process.
 */
import { closeSync, constants, fstatSync, openSync } from 'node:fs';
import { Qcow2Error } from '../errors.js';
import { NO_PERMISSIONS, PERM_ALL, PERMISSION_NAMES, type FilePermissions } from '../io/permissions.js';
import { nativeAddon, nativeStatus, type NativeAddon } from './native-addon.js';

/** Byte 100 + i is locked while permission i is taken. */
export const LOCK_PERM_BASE = 100;
/** Byte 200 + i is locked while permission i is not shared. */
export const LOCK_SHARED_BASE = 200;

/** fcntl errors meaning "no OFD locks here" (old kernel, file system without them): lock nothing, warn once. */
const UNSUPPORTED = new Set(['EINVAL', 'ENOSYS', 'EOPNOTSUPP', 'ENOTSUP']);

let warned = false;

function warnLockingOff(reason: string): void {
  if (warned) return;
  warned = true;
  process.stderr.write(`qcowkit: warning: image locking is off (${reason}); qemu is not kept from using the same images\n`);
}

/** Whether images opened from now on are locked: 'ofd' with the native helper, 'off' without it. */
export function lockingSupport(): 'ofd' | 'off' {
  return nativeAddon() === null ? 'off' : 'ofd';
}

function lockedError(name: string, message: string): Qcow2Error {
  return new Qcow2Error('IMAGE_LOCKED', `${message}. Is another process using the image [${name}]?`, { file: name });
}

function bitsOf(mask: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < PERMISSION_NAMES.length; i++) if ((mask & (1 << i)) !== 0) out.push(i);
  return out;
}

/** One file of this process (by device and inode), locked on its own descriptor for every open of it here. */
class LockedFile {
  /** Bits whose byte 100 + i / 200 + i this descriptor holds now. */
  private lockedPerm = 0;
  private lockedUnshared = 0;
  readonly holders = new Map<ImageLock, FilePermissions>();

  constructor(
    readonly key: string,
    private readonly fd: number,
    private readonly addon: NativeAddon,
  ) {}

  /** What all opens here take together, and what all of them share. */
  effective(): FilePermissions {
    let perm = 0;
    let shared = PERM_ALL;
    for (const p of this.holders.values()) {
      perm |= p.perm;
      shared &= p.shared;
    }
    return { perm, shared };
  }

  /** Locks the bytes of `perm` and `unshared` not held yet; with `unlock`, also drops the others (qemu's raw_apply_lock_bytes). */
  apply(perm: number, unshared: number, unlock: boolean, name: string): void {
    const sides = [
      { base: LOCK_PERM_BASE, want: perm, held: () => this.lockedPerm, set: (v: number) => (this.lockedPerm = v) },
      { base: LOCK_SHARED_BASE, want: unshared, held: () => this.lockedUnshared, set: (v: number) => (this.lockedUnshared = v) },
    ];
    for (const side of sides) {
      for (let i = 0; i < PERMISSION_NAMES.length; i++) {
        const bit = 1 << i;
        if ((side.want & bit) !== 0 && (side.held() & bit) === 0) {
          if (!this.addon.ofdSetLock(this.fd, side.base + i, 1, 'shared')) throw lockedError(name, `Failed to lock byte ${side.base + i}`);
          side.set(side.held() | bit);
        } else if (unlock && (side.want & bit) === 0 && (side.held() & bit) !== 0) {
          this.addon.ofdSetLock(this.fd, side.base + i, 1, 'unlock');
          side.set(side.held() & ~bit);
        }
      }
    }
  }

  /** Refuses when another open holds what `perm` needs free or what `shared` refuses (qemu's raw_check_lock_bytes). */
  check(perm: number, shared: number, name: string): void {
    for (const i of bitsOf(perm)) {
      if (this.addon.ofdGetLock(this.fd, LOCK_SHARED_BASE + i, 1, 'exclusive') !== null) {
        throw lockedError(name, `Failed to get "${PERMISSION_NAMES[i]}" lock`);
      }
    }
    for (const i of bitsOf(PERM_ALL & ~shared)) {
      if (this.addon.ofdGetLock(this.fd, LOCK_PERM_BASE + i, 1, 'exclusive') !== null) {
        throw lockedError(name, `Failed to get shared "${PERMISSION_NAMES[i]}" lock`);
      }
    }
  }

  close(): void {
    closeSync(this.fd);
  }
}

const lockedFiles = new Map<string, LockedFile>();

function fileKey(fd: number): string {
  const stat = fstatSync(fd, { bigint: true });
  return `${stat.dev}:${stat.ino}`;
}

/**
 * A descriptor of the same file as `fd`, for the locks alone: reopened through /proc/self/fd (the same inode even
 * if the name was since replaced), else by name and checked to be the same file. Read-only is enough: every lock
 * qemu's protocol places is a read lock.
 */
function openLockDescriptor(fd: number, name: string, key: string): number {
  // O_NONBLOCK: opening a FIFO (a hostile image can name one as its backing file) must not wait for a writer.
  const flags = constants.O_RDONLY | constants.O_NONBLOCK;
  let lockFd: number;
  try {
    lockFd = openSync(`/proc/self/fd/${fd}`, flags);
  } catch {
    lockFd = openSync(name, flags);
  }
  if (fileKey(lockFd) !== key) {
    closeSync(lockFd);
    throw new Qcow2Error('IO_ERROR', 'the file was replaced while it was being opened', { file: name });
  }
  return lockFd;
}

/**
 * The locks one open of an image file holds. Created for the open's descriptor; set() takes permissions (and
 * may be called again to change them), release() gives them up.
 */
export class ImageLock {
  private file: LockedFile | undefined;
  private off = false;

  constructor(
    private readonly fd: number,
    readonly name: string,
  ) {}

  /** The permissions this open holds now. */
  get permissions(): FilePermissions {
    return this.file?.holders.get(this) ?? NO_PERMISSIONS;
  }

  /**
   * Takes `next` instead of what this open held, refusing (Qcow2Error IMAGE_LOCKED, the old permissions kept)
   * when another process conflicts. A no-op where locking is off.
   */
  set(next: FilePermissions): void {
    if (this.off) return;
    const wantsLocks = next.perm !== 0 || (next.shared & PERM_ALL) !== PERM_ALL;
    if (this.file === undefined && !wantsLocks) return;
    const addon = nativeAddon();
    if (addon === null) {
      this.off = true;
      warnLockingOff(`the native helper is not loaded: ${nativeStatus().reason ?? 'unknown reason'}`);
      return;
    }
    try {
      this.update(addon, next);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (error instanceof Qcow2Error) throw error;
      if (code !== undefined && UNSUPPORTED.has(code)) {
        this.release();
        this.off = true;
        warnLockingOff(`${code}: the kernel or file system has no OFD locks for ${this.name}`);
        return;
      }
      throw new Qcow2Error('IO_ERROR', `could not lock the image: ${(error as Error).message}`, { file: this.name, cause: error });
    }
  }

  private update(addon: NativeAddon, next: FilePermissions): void {
    const file = (this.file ??= this.join(addon));
    const previous = file.holders.get(this);
    const before = file.effective();
    file.holders.set(this, { perm: next.perm & PERM_ALL, shared: next.shared & PERM_ALL });
    const after = file.effective();
    const grows = (before.perm | after.perm) !== before.perm || (before.shared & after.shared) !== before.shared;
    try {
      if (grows) {
        file.apply(before.perm | after.perm, PERM_ALL & (~before.shared | ~after.shared), false, this.name);
        file.check(after.perm, after.shared, this.name);
      }
    } catch (error) {
      if (previous === undefined) file.holders.delete(this);
      else file.holders.set(this, previous);
      try {
        file.apply(before.perm, PERM_ALL & ~before.shared, true, this.name);
      } finally {
        this.leaveIfIdle();
      }
      throw error;
    }
    file.apply(after.perm, PERM_ALL & ~after.shared, true, this.name);
  }

  private join(addon: NativeAddon): LockedFile {
    const key = fileKey(this.fd);
    let file = lockedFiles.get(key);
    if (file === undefined) {
      file = new LockedFile(key, openLockDescriptor(this.fd, this.name, key), addon);
      lockedFiles.set(key, file);
    }
    return file;
  }

  /** Drops this open's permissions; the file's descriptor closes (dropping every lock) with its last open. */
  release(): void {
    const file = this.file;
    if (file === undefined || !file.holders.delete(this)) return;
    const rest = file.effective();
    try {
      if (file.holders.size > 0) file.apply(rest.perm, PERM_ALL & ~rest.shared, true, this.name);
    } finally {
      this.leaveIfIdle();
    }
  }

  private leaveIfIdle(): void {
    const file = this.file;
    if (file === undefined || file.holders.has(this)) return;
    this.file = undefined;
    if (file.holders.size === 0) {
      lockedFiles.delete(file.key);
      file.close();
    }
  }
}
