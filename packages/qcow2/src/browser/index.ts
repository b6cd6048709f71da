/**
 * @qcowkit/qcow2/browser: the browser host. Images come from `File`s the user picks (backing files are picked
 * with them and matched by name), from http(s) URLs, or are made in memory; nothing leaves the page.
 *
 * @packageDocumentation
 */
import { keepOnClose } from '../api/memory-host.js';
import { portableCompressor } from '../api/portable-compressor.js';
import type { Host } from '../api/host.js';
import type { HostFiles } from '../device/host-files.js';
import { portableCodecsWith, type ZstdWasmSource } from '../engine/portable-codecs.js';
import { Qcow2Error } from '../errors.js';
import { httpHostFiles, isHttpUrl } from '../http/http-host-files.js';
import type { HttpStorageOptions } from '../http/http-storage.js';
import { MemoryStorage } from '../io/memory-storage.js';
import { BlobStorage } from './blob-storage.js';

export { BlobStorage } from './blob-storage.js';

/** A picked file: a `File`, or any `Blob` with a name. */
export interface NamedBlob extends Blob {
  readonly name: string;
}

/** Options of {@link browserHost}. */
export interface BrowserHostOptions {
  /** The files the user picked: the image and its backing files (an `<input type=file multiple>`'s `files`). */
  files?: Iterable<NamedBlob> | ArrayLike<NamedBlob>;
  /**
   * Where the zstd WebAssembly module is: a URL your page serves it from, or its bytes. Without it, reading a
   * zstd-compressed cluster fails with `CODEC_UNAVAILABLE` unless the bundler placed the module beside the code.
   */
  zstdWasm?: ZstdWasmSource;
  /** Options for images opened by URL. */
  http?: HttpStorageOptions;
}

/** The browser host: picked files, URLs, and files made in memory, readable back with `file(name)`. */
export interface BrowserHost extends Host {
  /** Adds a picked file (after the host was made: a second pick, a drop). */
  addFile(file: NamedBlob): void;
  /** The bytes of a file created or changed through this host (a converted image to download), or undefined. */
  file(name: string): Uint8Array | undefined;
}

function baseName(name: string): string {
  return name.slice(name.lastIndexOf('/') + 1);
}

/**
 * A {@link Host} for browsers. A name is looked up among the picked files, first as given, then by its last
 * path component, so an overlay that names `/var/lib/images/base.qcow2` finds the picked `base.qcow2`
 * (relative names resolve as on disk: `top.qcow2` naming `base.qcow2` finds `base.qcow2`). http(s) names are
 * read with range requests. Opening a picked file writable edits a copy in memory; created files live in
 * memory too: read them back with `file(name)`.
 *
 * @param options - The picked files, the zstd module's location, HTTP options.
 * @returns The host.
 *
 * @example
 * ```js
 * import { info, open } from '@qcowkit/qcow2';
 * import { browserHost } from '@qcowkit/qcow2/browser';
 * input.onchange = async () => {
 *   const host = browserHost({ files: input.files, zstdWasm: '/assets/zstd.wasm' });
 *   await using image = await open(input.files[0].name, { host });
 *   document.body.textContent = JSON.stringify(await info(image, { backingChain: true }), null, 2);
 * };
 * ```
 */
export function browserHost(options: BrowserHostOptions = {}): BrowserHost {
  const picked = new Map<string, NamedBlob>();
  const inMemory = new Map<string, MemoryStorage>();
  const addFile = (file: NamedBlob): void => {
    picked.set(file.name, file);
  };
  for (const file of Array.from(options.files ?? [])) addFile(file);
  const findPicked = (name: string): NamedBlob | undefined => picked.get(name) ?? picked.get(baseName(name));

  const local: HostFiles = {
    async open(name, { writable }) {
      const memory = inMemory.get(name);
      if (memory !== undefined) return keepOnClose(memory);
      const file = findPicked(name);
      if (file === undefined) {
        throw new Qcow2Error('IO_ERROR', `No such file: '${baseName(name)}' was not among the files chosen (pick it together with the image)`, { file: name, missing: true });
      }
      if (!writable) return new BlobStorage(file, name);
      const copy = new MemoryStorage(new Uint8Array(await file.arrayBuffer()), { name });
      inMemory.set(name, copy);
      return keepOnClose(copy);
    },
    async create(name) {
      const storage = new MemoryStorage(new Uint8Array(0), { name });
      inMemory.set(name, storage);
      return keepOnClose(storage);
    },
    async canonical(name) {
      return isHttpUrl(name) ? name : baseName(name);
    },
  };
  const zstd = options.zstdWasm;
  return {
    files: httpHostFiles(options.http ?? {}, local),
    codecs: portableCodecsWith(zstd === undefined ? {} : { zstdWasm: zstd }),
    compressor: (type, clusterSize) => portableCompressor(type, clusterSize, zstd),
    addFile,
    file: (name) => inMemory.get(name)?.contents(),
  };
}
