import type { HostFiles } from '../device/host-files.js';
import { Qcow2Error } from '../errors.js';
import { MemoryStorage } from '../io/memory-storage.js';

/** A set of named in-memory files, as HostFiles, for tests that need chains without touching the disk. */
export class MemoryFiles implements HostFiles {
  readonly files = new Map<string, MemoryStorage>();

  add(name: string, bytes: Uint8Array = new Uint8Array(0)): MemoryStorage {
    const storage = new MemoryStorage(bytes, { name });
    this.files.set(name, storage);
    return storage;
  }

  async open(name: string): Promise<MemoryStorage> {
    const storage = this.files.get(name);
    if (storage === undefined) throw new Qcow2Error('IO_ERROR', 'No such file or directory', { file: name, missing: true });
    // Hand out a view that shares the bytes but can be closed independently.
    return storage;
  }
}
