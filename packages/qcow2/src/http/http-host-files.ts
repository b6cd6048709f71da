import type { HostFiles } from '../device/host-files.js';
import { Qcow2Error } from '../errors.js';
import type { Storage } from '../io/storage.js';
import { HttpStorage, type HttpStorageOptions } from './http-storage.js';

/** Whether `name` is an http(s) URL, which an HTTP host reads with range requests. */
export function isHttpUrl(name: string): boolean {
  return /^https?:\/\//i.test(name);
}

/**
 * HostFiles that open http(s) URLs (read-only) and hand any other name to `otherwise` (Node: the file system,
 * as qemu opens an absolute backing path named by a remote image); without it, other names are refused.
 */
export function httpHostFiles(options: HttpStorageOptions = {}, otherwise?: HostFiles): HostFiles {
  const files: HostFiles = {
    async open(name, openOptions): Promise<Storage> {
      if (!isHttpUrl(name)) {
        if (otherwise !== undefined) return otherwise.open(name, openOptions);
        throw new Qcow2Error('IO_ERROR', 'not an http(s) URL', { file: name });
      }
      if (openOptions.writable) throw new Qcow2Error('READ_ONLY', 'images read over HTTP are read-only', { file: name });
      return HttpStorage.open(name, options);
    },
    async canonical(name) {
      if (!isHttpUrl(name)) return (await otherwise?.canonical?.(name)) ?? name;
      try {
        return new URL(name).href;
      } catch {
        return name;
      }
    },
  };
  if (otherwise?.create !== undefined) {
    const create = otherwise.create.bind(otherwise);
    files.create = async (name) => {
      if (isHttpUrl(name)) throw new Qcow2Error('READ_ONLY', 'images are only read over HTTP, never written', { file: name });
      return create(name);
    };
  }
  return files;
}
