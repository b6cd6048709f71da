import type { BlockDevice } from '../device/block-device.js';
import { WRITE_CHUNK } from '../io/write-size.js';

/**
 * How a bulk copy (convert) moves data, with qemu-img convert's knobs: `-m` requests in flight (1..16, default 8)
 * and `-W` (write chunks as they become ready rather than in guest order).
 */
export interface CopyPipelineOptions {
  /** Bytes per request. Large enough to cost few calls, small enough to stay in the CPU's caches between stages. */
  chunkSize: number;
  /** Chunks in flight, from the read to the write: qemu-img -m. */
  depth: number;
  /** Hand chunks to `commit` as soon as they are ready, not in guest order: qemu-img -W. */
  outOfOrder?: boolean;
}

/** qemu-img convert's default number of coroutines (-m). */
export const DEFAULT_COPY_DEPTH = 8;
/**
 * The default for compressed output: compression is bound by the cores, not by I/O, and each chunk in flight
 * holds its buffers and its compressor's output (4 kept zlib and zstd converts of 2 GiB near 100 MiB of RSS).
 */
export const DEFAULT_COMPRESS_DEPTH = 4;
/** qemu-img -m accepts 1..16. */
export const MAX_COPY_DEPTH = 16;
/** Requests of WRITE_CHUNK (1 MiB, see io/write-size.ts): a chunk read, scanned and written stays in a core's L2. */
export const COPY_CHUNK = WRITE_CHUNK;
/** Buffer bytes in flight at most: memory stays bounded whatever -m and the chunk size (-S up to 16 MiB). */
export const MAX_BYTES_IN_FLIGHT = 32 * 1024 * 1024;

interface InFlight<T> {
  /** Settles when the chunk is read and prepared; never rejects (the error is kept in `failure`). */
  ready: Promise<InFlight<T>>;
  buffer: Uint8Array;
  chunk: Uint8Array;
  offset: number;
  prepared?: T;
  failure?: { error: unknown };
}

/**
 * Copies a sequence of guest ranges through three stages, with up to `depth` chunks in flight:
 *   read     device.read of each chunk, several at once (each a request to the thread pool);
 *   prepare  per chunk, as soon as it is read (zero scan, compression on worker threads...): may overlap;
 *   commit   per chunk, one at a time, in guest order (or in completion order with outOfOrder).
 * Buffers are reused: a chunk's bytes are valid until its commit returns. No per-cluster promises: a stage sees
 * a whole chunk. On failure the chunks still in flight settle before the error is rethrown, so the caller can
 * close the files under them.
 */
export async function copyPipeline<T>(
  device: BlockDevice,
  ranges: AsyncIterable<{ offset: number; length: number }> | Iterable<{ offset: number; length: number }>,
  options: CopyPipelineOptions,
  prepare: (chunk: Uint8Array, offset: number) => T | Promise<T>,
  commit: (prepared: T, chunk: Uint8Array, offset: number) => Promise<void>,
): Promise<void> {
  const { chunkSize } = options;
  const depth = Math.max(1, Math.min(Math.floor(options.depth), Math.floor(MAX_BYTES_IN_FLIGHT / chunkSize)));
  const pool: Uint8Array[] = [];
  const inFlight: Array<InFlight<T>> = [];

  const start = (offset: number, length: number): void => {
    const buffer = pool.pop() ?? new Uint8Array(chunkSize);
    const entry = { buffer, chunk: buffer.subarray(0, length), offset } as InFlight<T>;
    entry.ready = (async () => {
      try {
        await device.read(entry.chunk, offset);
        entry.prepared = await prepare(entry.chunk, offset);
      } catch (error) {
        entry.failure = { error };
      }
      return entry;
    })();
    inFlight.push(entry);
  };

  const commitOne = async (): Promise<void> => {
    const entry = options.outOfOrder ? await Promise.race(inFlight.map((e) => e.ready)) : await inFlight[0]!.ready;
    inFlight.splice(inFlight.indexOf(entry), 1);
    if (entry.failure !== undefined) throw entry.failure.error;
    await commit(entry.prepared as T, entry.chunk, entry.offset);
    pool.push(entry.buffer);
  };

  try {
    for await (const range of ranges) {
      const end = range.offset + range.length;
      for (let pos = range.offset; pos < end; pos += chunkSize) {
        start(pos, Math.min(chunkSize, end - pos));
        if (inFlight.length >= depth) await commitOne();
      }
    }
    while (inFlight.length > 0) await commitOne();
  } catch (error) {
    await Promise.all(inFlight.splice(0).map((e) => e.ready));
    throw error;
  }
}
