import type { HostFiles } from '../device/host-files.js';
import { Qcow2Error } from '../errors.js';
import { MemoryStorage } from '../io/memory-storage.js';
import type { Storage } from '../io/storage.js';
import type { Host } from './host.js';

/** A host whose files live in memory: for tests, examples, and browsers building an image to download. */
export interface MemoryHost extends Host {
  /** The current bytes of a file, or undefined when there is no such file. */
  file(name: string): Uint8Array | undefined;
  /** Adds (or replaces) a file. */
  addFile(name: string, bytes: Uint8Array): void;
}

/** A Storage view of a shared MemoryStorage whose close() leaves the bytes in place (the host keeps them). */
export function keepOnClose(storage: MemoryStorage): Storage {
  return {
    name: storage.name,
    read: (buffer, offset) => storage.read(buffer, offset),
    write: (buffer, offset) => storage.write(buffer, offset),
    size: () => storage.size(),
    flush: () => storage.flush(),
    truncate: (size) => storage.truncate(size),
    close: async () => {},
  };
}

/**
 * A {@link Host} that keeps files in memory, by name: what an operation creates can be opened again, and read
 * out with `file(name)`. Names are plain strings; relative backing names resolve against the naming image's
 * directory, as on disk.
 *
 * @param files - Files to start with, by name.
 * @returns The host.
 *
 * @example
 * ```ts
 * import { create, memoryHost } from '@qcowkit/qcow2';
 * const host = memoryHost();
 * await (await create('disk.qcow2', { host, size: 1 << 20 })).close();
 * console.log(host.file('disk.qcow2')?.length); // 196616 (as many bytes as qemu-img create writes)
 * ```
 */
export function memoryHost(files: Record<string, Uint8Array> = {}): MemoryHost {
  const stored = new Map<string, MemoryStorage>();
  const add = (name: string, bytes: Uint8Array): void => {
    stored.set(name, new MemoryStorage(bytes, { name }));
  };
  for (const [name, bytes] of Object.entries(files)) add(name, bytes);
  const hostFiles: HostFiles = {
    async open(name) {
      const storage = stored.get(name);
      if (storage === undefined) throw new Qcow2Error('IO_ERROR', 'No such file or directory', { file: name, missing: true });
      return keepOnClose(storage);
    },
    async create(name) {
      add(name, new Uint8Array(0));
      return keepOnClose(stored.get(name)!);
    },
  };
  return {
    files: hostFiles,
    file: (name) => stored.get(name)?.contents(),
    addFile: add,
  };
}
