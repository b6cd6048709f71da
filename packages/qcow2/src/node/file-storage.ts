import { closeSync, constants, type Stats, fstatSync, fsyncSync, ftruncateSync, openSync, readSync, writeSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { CREATE_PERMISSIONS } from '../device/image-permissions.js';
import { Qcow2Error } from '../errors.js';
import type { FilePermissions } from '../io/permissions.js';
import type { Storage, StorageRegion } from '../io/storage.js';
import { beforeFileWrite } from './crash-point.js';
import { ImageLock } from './image-locks.js';
import { fileDataRegions } from './sparse-regions.js';

/** A failed file system call on `name` as the engine's IO_ERROR: qemu's words for the common errnos, `missing` for ENOENT. */
export function fileIoError(name: string, error: unknown): Qcow2Error {
  const e = error as NodeJS.ErrnoException;
  const reason = e.code === 'ENOENT' ? 'No such file or directory' : e.code === 'EACCES' ? 'Permission denied' : e.message;
  return new Qcow2Error('IO_ERROR', reason, { file: name, cause: error, missing: e.code === 'ENOENT' });
}

let blockingByDefault = false;

/**
 * Makes files opened from now on use blocking positional I/O (pread/pwrite on the calling thread). A command
 * line tool doing one sequential job gains from it: each async call round-trips through libuv's thread pool,
 * which measured about 20% of a raw convert. A server embedding the engine keeps the async default.
 */
export function useBlockingFileIo(blocking: boolean): void {
  blockingByDefault = blocking;
}

/** Whether files are opened for blocking I/O by default (useBlockingFileIo). */
export function blockingFileIo(): boolean {
  return blockingByDefault;
}

/** How {@link FileStorage.open} opens a file. */
export interface FileOpenOptions {
  /** Open for reading and writing (default: read-only). */
  writable?: boolean;
  /** Create the file, or empty an existing one (after its locks are taken: a file in use stays untouched). */
  create?: boolean;
  /** Blocking positional I/O on the calling thread (default: as set by useBlockingFileIo). */
  blocking?: boolean;
  /**
   * qemu's image locks to take at once (see image-locks.ts); default: none until setPermissions(), except that
   * `create` takes CREATE_PERMISSIONS. Opening an image through openImage sets them from its format.
   */
  permissions?: FilePermissions;
}

/**
 * A file on the local file system, read and written with positional I/O, locked against other processes (qemu)
 * as qemu locks its images once permissions are set.
 */
export class FileStorage implements Storage {
  private closed = false;
  private readonly lock: ImageLock;

  /**
   * `handle` for asynchronous I/O (libuv's thread pool); undefined when blocking: then every call, open and
   * close included, is a system call on the calling thread, and node:fs/promises is never loaded (a metadata
   * command starts ~5 ms sooner without it and without the thread pool).
   */
  private constructor(
    readonly name: string,
    private readonly descriptor: number,
    private readonly handle: FileHandle | undefined,
  ) {
    this.lock = new ImageLock(descriptor, name);
  }

  static async open(name: string, options: FileOpenOptions = {}): Promise<FileStorage> {
    // Create without O_TRUNC, and truncate only a file that has contents: ext4 flushes a file on close when it
    // was truncated to zero and rewritten (auto_da_alloc), which cost 0.7 s per 1 GiB written.
    const flags = options.create ? constants.O_RDWR | constants.O_CREAT : options.writable ? 'r+' : 'r';
    const blocking = options.blocking ?? blockingByDefault;
    let storage: FileStorage;
    let size: number;
    try {
      if (blocking) {
        const fd = openSync(name, flags);
        storage = new FileStorage(name, fd, undefined);
      } else {
        const handle = await open(name, flags);
        storage = new FileStorage(name, handle.fd, handle);
      }
    } catch (error) {
      throw fileIoError(name, error);
    }
    try {
      const stat = await storage.stat();
      if (stat.isDirectory()) throw Object.assign(new Error('Is a directory'), { code: 'EISDIR' });
      size = stat.size;
      const permissions = options.permissions ?? (options.create ? CREATE_PERMISSIONS : undefined);
      if (permissions !== undefined) storage.lock.set(permissions);
      if (options.create && size > 0) await storage.truncate(0);
    } catch (error) {
      await storage.close().catch(() => {});
      throw error instanceof Qcow2Error ? error : fileIoError(name, error);
    }
    return storage;
  }

  /** Takes qemu's image locks for `permissions` instead of those held; Qcow2Error IMAGE_LOCKED when in use. */
  async setPermissions(permissions: FilePermissions): Promise<void> {
    this.lock.set(permissions);
  }

  /** The permissions this open holds (for tests and messages). */
  get permissions(): FilePermissions {
    return this.lock.permissions;
  }

  /** The descriptor, for system calls Node has no binding for (copy_file_range). Valid until close(). */
  get fd(): number {
    return this.descriptor;
  }

  async read(buffer: Uint8Array, offset: number): Promise<number> {
    let done = 0;
    try {
      // A single read may return short (large reads on Linux stop at 2 GiB); loop until the end of the file.
      while (done < buffer.length) {
        const bytesRead =
          this.handle === undefined
            ? readSync(this.descriptor, buffer, done, buffer.length - done, offset + done)
            : (await this.handle.read(buffer, done, buffer.length - done, offset + done)).bytesRead;
        if (bytesRead === 0) break;
        done += bytesRead;
      }
    } catch (error) {
      throw fileIoError(this.name, error);
    }
    return done;
  }

  async write(buffer: Uint8Array, offset: number): Promise<void> {
    beforeFileWrite();
    let done = 0;
    try {
      while (done < buffer.length) {
        done +=
          this.handle === undefined
            ? writeSync(this.descriptor, buffer, done, buffer.length - done, offset + done)
            : (await this.handle.write(buffer, done, buffer.length - done, offset + done)).bytesWritten;
      }
    } catch (error) {
      throw fileIoError(this.name, error);
    }
  }

  async size(): Promise<number> {
    return (await this.stat()).size;
  }

  async allocatedSize(): Promise<number> {
    return (await this.stat()).blocks * 512;
  }

  private async stat(): Promise<Stats> {
    return this.handle === undefined ? fstatSync(this.descriptor) : await this.handle.stat();
  }

  /**
   * Holes and data of [offset, offset+length), found with lseek(SEEK_DATA/SEEK_HOLE) through the optional
   * native addon (see sparse-regions.ts); bytes past the end of the file are a hole. Without the addon (not
   * built, or Windows) this is the pure fallback: the whole range is one data region, as a file system without
   * SEEK_HOLE would report it, so callers read (and maybe scan) every byte.
   */
  async dataRegions(offset: number, length: number): Promise<StorageRegion[]> {
    if (length <= 0) return [];
    try {
      const regions = fileDataRegions(this.descriptor, offset, length, await this.size());
      if (regions !== undefined) return regions;
    } catch (error) {
      throw fileIoError(this.name, error);
    }
    return [{ offset, length, hole: false }];
  }

  async flush(): Promise<void> {
    if (this.handle === undefined) fsyncSync(this.descriptor);
    else await this.handle.sync();
  }

  async truncate(size: number): Promise<void> {
    beforeFileWrite();
    if (this.handle === undefined) ftruncateSync(this.descriptor, size);
    else await this.handle.truncate(size);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      this.lock.release();
    } finally {
      if (this.handle === undefined) closeSync(this.descriptor);
      else await this.handle.close();
    }
  }
}
