import { Qcow2Error } from '../errors.js';
import type { Storage } from '../io/storage.js';
import { BlockCache } from './block-cache.js';
import { fetchWithRetries, type FetchPolicy } from './fetch-retry.js';

/** How an {@link HttpStorage} fetches: timeouts, retries, headers, and its cache. */
export interface HttpStorageOptions extends Partial<FetchPolicy> {
  /** Small reads are served from cached blocks of this size (default 64 KiB: one L2 table, one cluster). */
  blockSize?: number;
  /** Most bytes of blocks kept (default 16 MiB). */
  cacheBytes?: number;
  /** Reads at least this long bypass the cache and fetch exactly their range (default 1 MiB). */
  directReadBytes?: number;
}

const DEFAULT_BLOCK = 64 * 1024;
const DEFAULT_CACHE = 16 * 1024 * 1024;
const DEFAULT_DIRECT = 1024 * 1024;

/** "bytes START-END/TOTAL" (or "bytes * /TOTAL" on a 416). */
function parseContentRange(value: string | null): { start: number; end: number; total: number } | undefined {
  const match = value === null ? null : /^bytes\s+(?:(\d+)-(\d+)|\*)\/(\d+)\s*$/i.exec(value);
  if (match === null) return undefined;
  const total = Number(match[3]);
  return { start: match[1] === undefined ? 0 : Number(match[1]), end: match[2] === undefined ? -1 : Number(match[2]), total };
}

function noRanges(url: string, why: string): Qcow2Error {
  return new Qcow2Error('RANGE_NOT_SUPPORTED', `the server does not support range requests (${why}); qcowkit reads images over HTTP only with them`, { file: url });
}

/**
 * A read-only image file behind an http(s) URL, read with `Range` requests (fetch, so it runs in Node and in
 * browsers). Only the ranges asked for move: small reads (headers, L1/L2 tables) go through a cache of aligned
 * blocks, with concurrent requests for one block merged into one; large reads (guest data) fetch exactly their
 * range. Transient failures (network errors, 408/429/5xx, timeouts) are retried with a bounded backoff; a
 * server that ignores `Range` (200 with the whole file, or 206 without Content-Range) is refused at once.
 */
export class HttpStorage implements Storage {
  private readonly cache: BlockCache;
  /** qemu's curl driver has no block info (see Storage.blockInfo). */
  readonly blockInfo = false;
  private readonly directReadBytes: number;

  private constructor(
    readonly name: string,
    private readonly length: number,
    private readonly policy: FetchPolicy,
    blockSize: number,
    cacheBytes: number,
    directReadBytes: number,
    firstBlock: Uint8Array | undefined,
  ) {
    this.cache = new BlockCache(blockSize, cacheBytes, (offset, size) => this.fetchRange(offset, size));
    this.directReadBytes = directReadBytes;
    if (firstBlock !== undefined) this.cache.put(0, firstBlock);
  }

  /** Opens `url`: its first block is fetched at once, which also tells the size and that ranges work. */
  static async open(url: string, options: HttpStorageOptions = {}): Promise<HttpStorage> {
    const policy: FetchPolicy = {
      fetch: options.fetch ?? ((input, init) => globalThis.fetch(input, init)),
      timeoutMs: options.timeoutMs ?? 30_000,
      retries: options.retries ?? 3,
      retryDelayMs: options.retryDelayMs ?? 250,
      headers: options.headers ?? {},
    };
    const blockSize = options.blockSize ?? DEFAULT_BLOCK;
    const response = await fetchWithRetries(url, `bytes=0-${blockSize - 1}`, policy, async (r) => {
      if (r.status === 416) {
        // An empty file: no byte range is satisfiable.
        const range = parseContentRange(r.headers.get('content-range'));
        if (range === undefined || range.total !== 0) throw noRanges(url, '416 without an empty Content-Range');
        await r.body?.cancel();
        return { total: 0, bytes: new Uint8Array(0) };
      }
      if (r.status === 200) {
        await r.body?.cancel();
        throw noRanges(url, 'it answered 200 with the whole file instead of 206');
      }
      const range = parseContentRange(r.headers.get('content-range'));
      if (range === undefined || range.start !== 0) {
        await r.body?.cancel();
        throw noRanges(url, 'its 206 answer has no usable Content-Range');
      }
      return { total: range.total, bytes: new Uint8Array(await r.arrayBuffer()) };
    });
    if (!Number.isSafeInteger(response.total)) throw new Qcow2Error('OFFSET_TOO_LARGE', `file size ${response.total} is too large`, { file: url });
    const first = response.bytes.length === Math.min(blockSize, response.total) ? response.bytes : undefined;
    return new HttpStorage(url, response.total, policy, blockSize, options.cacheBytes ?? DEFAULT_CACHE, options.directReadBytes ?? DEFAULT_DIRECT, first);
  }

  /** Fetches [offset, offset+size) (already clipped to the file), checking the server answered that range. */
  private fetchRange(offset: number, size: number): Promise<Uint8Array> {
    const url = this.name;
    return fetchWithRetries(url, `bytes=${offset}-${offset + size - 1}`, this.policy, async (r) => {
      if (r.status === 200) {
        await r.body?.cancel();
        throw noRanges(url, 'it answered 200 with the whole file instead of 206');
      }
      const range = parseContentRange(r.headers.get('content-range'));
      if (range === undefined || range.start !== offset) {
        await r.body?.cancel();
        throw noRanges(url, 'its 206 answer does not start at the offset asked for');
      }
      const bytes = new Uint8Array(await r.arrayBuffer());
      if (bytes.length !== size) {
        throw new Qcow2Error('IO_ERROR', `short answer: ${bytes.length} of ${size} bytes at offset ${offset} (was the file changed?)`, { file: url });
      }
      return bytes;
    });
  }

  async read(buffer: Uint8Array, offset: number): Promise<number> {
    if (offset >= this.length || buffer.length === 0) return 0;
    const n = Math.min(buffer.length, this.length - offset);
    const dest = buffer.subarray(0, n);
    if (n >= this.directReadBytes) dest.set(await this.fetchRange(offset, n));
    else await this.cache.read(dest, offset, this.length);
    return n;
  }

  async size(): Promise<number> {
    return this.length;
  }

  async write(): Promise<void> {
    throw new Qcow2Error('READ_ONLY', 'images read over HTTP are read-only', { file: this.name });
  }

  async truncate(): Promise<void> {
    throw new Qcow2Error('READ_ONLY', 'images read over HTTP are read-only', { file: this.name });
  }

  async flush(): Promise<void> {}

  async close(): Promise<void> {
    this.cache.clear();
  }
}
