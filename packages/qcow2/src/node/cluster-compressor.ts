import { deflateRaw, constants } from 'node:zlib';
import { promisify } from 'node:util';
import { loadZstd } from '../engine/portable-codecs.js';
import type { ClusterCompressor } from '../ops/convert-to-qcow2.js';

const deflateRawAsync = promisify(deflateRaw);

/**
 * Compressors for compressed clusters, as qemu writes them: raw deflate with a 4 KiB window (qemu inflates with
 * windowBits -12, so a larger window would write streams qemu cannot read) at the default level, or one zstd
 * frame. node:zlib runs deflate on libuv's thread pool, so the clusters of a chunk compress in parallel.
 */
export function clusterCompressor(type: 'zlib' | 'zstd', clusterSize: number): ClusterCompressor {
  if (type === 'zlib') {
    return async (cluster) => {
      const out = await deflateRawAsync(cluster, { windowBits: 12, level: constants.Z_DEFAULT_COMPRESSION, memLevel: 9 });
      return out.length < clusterSize ? new Uint8Array(out.buffer, out.byteOffset, out.length) : undefined;
    };
  }
  return async (cluster) => {
    const out = (await loadZstd()).compress(cluster, 3);
    return out.length < clusterSize ? out : undefined;
  };
}
