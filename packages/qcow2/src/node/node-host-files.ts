import { realpathSync } from 'node:fs';
import { realpath } from 'node:fs/promises';
import type { HostFiles } from '../device/host-files.js';
import { httpHostFiles } from '../http/http-host-files.js';
import { FileStorage, blockingFileIo } from './file-storage.js';

/** The local file system alone. */
const localFiles: HostFiles = {
  open(name, options) {
    return FileStorage.open(name, { writable: options.writable });
  },
  create(name) {
    return FileStorage.open(name, { create: true });
  },
  async canonical(name) {
    try {
      // With blocking I/O, on this thread too (a round trip through the thread pool costs more than the call).
      return blockingFileIo() ? realpathSync.native(name) : await realpath(name);
    } catch {
      return name;
    }
  },
};

/**
 * The engine's HostFiles in Node: local files, and http(s) URLs read with range requests (as qemu-img reads
 * a URL through its curl driver; a remote image's relative backing names resolve against its URL).
 */
export const nodeHostFiles: HostFiles = httpHostFiles({}, localFiles);
