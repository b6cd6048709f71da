import type { FilePermissions } from './permissions.js';

/**
 * Storage: the only way the engine touches bytes. Files in Node, memory in tests and browsers, anything else a
 * host provides. Positional, so concurrent reads need no seek state.
 */
export interface Storage {
  /** A name for messages (the file path, or a label). */
  readonly name: string;
  /**
   * Reads up to `buffer.length` bytes at `offset` into `buffer`. Returns the number of bytes read, which is
   * shorter than asked only at the end of the storage.
   */
  read(buffer: Uint8Array, offset: number): Promise<number>;
  write(buffer: Uint8Array, offset: number): Promise<void>;
  size(): Promise<number>;
  flush(): Promise<void>;
  truncate(size: number): Promise<void>;
  close(): Promise<void>;
  /**
   * False for storage whose qemu protocol driver answers no block-info query (curl, for URLs): qemu-img info then
   * prints no "dirty-flag" for a raw image on it. Absent means true (files).
   */
  readonly blockInfo?: boolean;
  /** Bytes the storage really occupies (allocated blocks of a sparse file), when the host can tell. */
  allocatedSize?(): Promise<number>;
  /**
   * Which parts of [offset, offset+length) hold data and which are holes (never written, read as zeros), when
   * the host can tell (SEEK_DATA/SEEK_HOLE). Regions cover the range in order.
   */
  dataRegions?(offset: number, length: number): Promise<StorageRegion[]>;
  /**
   * Takes `permissions` for as long as the storage is open, refusing (Qcow2Error IMAGE_LOCKED, nothing changed)
   * when another process holds what they refuse to share or refuses what they take: qemu's image locking.
   * Replaces the permissions set before. Storages other processes cannot reach (memory) have no such method.
   */
  setPermissions?(permissions: FilePermissions): Promise<void>;
}

/** A run of a storage's bytes that is either data or a hole (see `Storage.dataRegions`). */
export interface StorageRegion {
  offset: number;
  length: number;
  hole: boolean;
}

/**
 * Reads `buffer.length` bytes at `offset`; bytes past the end of the storage read as zeros, as qemu's file
 * driver does for guest data. Returns how many bytes came from the storage.
 */
export async function readZeroPadded(storage: Storage, buffer: Uint8Array, offset: number): Promise<number> {
  let done = 0;
  while (done < buffer.length) {
    const n = await storage.read(buffer.subarray(done), offset + done);
    if (n <= 0) break;
    done += n;
  }
  if (done < buffer.length) buffer.fill(0, done);
  return done;
}
