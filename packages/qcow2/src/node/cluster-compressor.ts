import { existsSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { constants, deflateRaw } from 'node:zlib';
import type { ClusterCompressor } from '../ops/convert-to-qcow2.js';
import { zstdClusterCompressor, type ZstdClusterCompress } from './zstd-wasm-compressor.js';
import { ZSTD_LEVEL, ZstdWorkers } from './zstd-workers.js';

/**
 * Compressors for compressed clusters, as qemu writes them: raw deflate with a 4 KiB window (qemu inflates with
 * windowBits -12, so a larger window would write streams qemu cannot read) at the default level, or one zstd
 * frame at zstd's default level. Both use every core: node:zlib deflates on libuv's thread pool (a few clusters
 * at a time, which bounds the memory of zlib's per-call state), zstd runs its WASM build on worker threads
 * (zstd-workers.ts; on the main thread where the worker script is not beside this module, as when running from
 * TypeScript sources). Each cluster is compressed on its own, so the streams, and the image the caller writes
 * in guest order, do not depend on the thread count.
 */
export function clusterCompressor(type: 'zlib' | 'zstd', clusterSize: number, options: { threads?: number } = {}): ClusterCompressor {
  const threads = Math.max(1, options.threads ?? availableParallelism());
  return type === 'zlib' ? deflateCompressor(clusterSize, threads * 2) : zstdCompressor(clusterSize, threads);
}

function deflateCompressor(clusterSize: number, inFlight: number): ClusterCompressor {
  const limit = new Semaphore(inFlight);
  // Made here, not when the module loads: the CLI's bundle loads node:zlib on first use.
  const deflateRawAsync = promisify(deflateRaw);
  return async (cluster) => {
    await limit.acquire();
    try {
      // One output chunk of the cluster's size, and no more: a stream that does not fit is useless anyway, and
      // zlib stops there instead of taking a second chunk and joining both (garbage that piled up, issue 10).
      const out = await deflateRawAsync(cluster, {
        windowBits: 12,
        level: constants.Z_DEFAULT_COMPRESSION,
        memLevel: 9,
        chunkSize: clusterSize,
        maxOutputLength: clusterSize - 1,
      }).catch((error: unknown) => {
        if ((error as NodeJS.ErrnoException).code === 'ERR_BUFFER_TOO_LARGE') return undefined;
        throw error;
      });
      return out !== undefined && out.length < clusterSize ? new Uint8Array(out.buffer, out.byteOffset, out.length) : undefined;
    } finally {
      limit.release();
    }
  };
}

function zstdCompressor(clusterSize: number, threads: number): ClusterCompressor {
  if (!existsSync(fileURLToPath(new URL('./zstd-worker.js', import.meta.url)))) return mainThreadZstd(clusterSize);
  const workers = new ZstdWorkers(threads);
  const compressor: ClusterCompressor = async (cluster) => (await workers.compress([cluster], clusterSize))[0];
  compressor.many = (clusters) => workers.compress(clusters, clusterSize);
  return compressor;
}

/** zstd on the calling thread, the way the workers do it. */
function mainThreadZstd(clusterSize: number): ClusterCompressor {
  let compress: Promise<ZstdClusterCompress> | undefined;
  return async (cluster) => {
    compress ??= zstdClusterCompressor(clusterSize, ZSTD_LEVEL);
    return (await compress)(cluster, clusterSize);
  };
}

/** At most `permits` holders at once; the others wait in order. */
class Semaphore {
  private readonly waiting: Array<() => void> = [];

  constructor(private permits: number) {}

  async acquire(): Promise<void> {
    if (this.permits > 0) {
      this.permits--;
      return;
    }
    await new Promise<void>((resolve) => this.waiting.push(resolve));
  }

  release(): void {
    const next = this.waiting.shift();
    if (next !== undefined) next();
    else this.permits++;
  }
}
