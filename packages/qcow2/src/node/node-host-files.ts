import { realpath } from 'node:fs/promises';
import type { HostFiles } from '../device/host-files.js';
import { FileStorage } from './file-storage.js';

/** The local file system as the engine's HostFiles. */
export const nodeHostFiles: HostFiles = {
  open(name, options) {
    return FileStorage.open(name, { writable: options.writable });
  },
  async canonical(name) {
    try {
      return await realpath(name);
    } catch {
      return name;
    }
  },
};
