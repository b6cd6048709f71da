/**
 * @qcowkit/qcow2/http: images over HTTP, read with `Range` requests through `fetch` (Node 18+ and browsers).
 * A map or an info of a large remote image moves only the metadata it reads.
 *
 * @packageDocumentation
 */
import type { Host } from '../api/host.js';
import { portableCodecsWith, type ZstdWasmSource } from '../engine/portable-codecs.js';
import { httpHostFiles } from './http-host-files.js';
import type { HttpStorageOptions } from './http-storage.js';

export { HttpStorage, type HttpStorageOptions } from './http-storage.js';
export type { FetchPolicy } from './fetch-retry.js';
export { httpHostFiles, isHttpUrl } from './http-host-files.js';

/** Options of {@link httpHost}. */
export interface HttpHostOptions extends HttpStorageOptions {
  /** Where the zstd WebAssembly module is (needed in browsers for zstd-compressed clusters). */
  zstdWasm?: ZstdWasmSource;
}

/**
 * A {@link Host} that opens http(s) URLs, read-only, with the portable codecs. Backing files named relative
 * to a remote image resolve against its URL, as qemu-img's curl driver resolves them.
 *
 * @param options - Timeouts, retries, cache sizes, extra headers, and the zstd module's location.
 * @returns The host.
 *
 * @example
 * ```ts
 * import { map, open } from '@qcowkit/qcow2';
 * import { httpHost } from '@qcowkit/qcow2/http';
 * await using image = await open('https://example.com/images/disk.qcow2', { host: httpHost({ timeoutMs: 10_000 }) });
 * for await (const entry of map(image)) if (entry.data) console.log(entry.start, entry.length);
 * ```
 */
export function httpHost(options: HttpHostOptions = {}): Host {
  const { zstdWasm, ...storage } = options;
  return { files: httpHostFiles(storage), codecs: portableCodecsWith(zstdWasm === undefined ? {} : { zstdWasm }) };
}
