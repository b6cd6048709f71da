import { loadZstd, type ZstdWasmSource } from '../engine/portable-codecs.js';
import { Qcow2Error } from '../errors.js';
import type { ClusterCompressor } from '../ops/convert-to-qcow2.js';

/**
 * The compressor hosts without node:zlib use: zstd through the WASM module. zlib is refused: qemu reads
 * deflate streams with a 4 KiB window, and the portable deflate (fflate) always writes 32 KiB windows.
 */
export function portableCompressor(type: 'zlib' | 'zstd', clusterSize: number, zstdWasm?: ZstdWasmSource): ClusterCompressor {
  if (type === 'zlib') {
    throw new Qcow2Error('CODEC_UNAVAILABLE', "zlib compression needs Node's zlib (qemu's 4 KiB window); create the image with compressionType: 'zstd'");
  }
  return async (cluster) => {
    const out = (await loadZstd(zstdWasm)).compress(cluster, 3);
    return out.length < clusterSize ? out : undefined;
  };
}
