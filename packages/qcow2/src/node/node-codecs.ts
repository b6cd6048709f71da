import { promisify } from 'node:util';
import { constants, inflateRaw } from 'node:zlib';
import type { CompressionCodecs } from '../engine/compression.js';
import { portableCodecs } from '../engine/portable-codecs.js';

/**
 * node:zlib's native inflate (several times faster than pure JS); zstd stays on the WASM build. Made on first use:
 * the CLI's bundle loads node:zlib only when it is called (commands that never inflate start faster).
 */
let inflateRawAsync: ((input: Uint8Array, options: object) => Promise<Buffer>) | undefined;

/** Node's codecs: node:zlib for deflate (on the thread pool), the WASM build for zstd. */
export const nodeCodecs: CompressionCodecs = {
  /**
   * On the thread pool, so the clusters of one read decompress in parallel. Sync flush: qemu's stream may stop
   * without a final block marker past what one cluster needs. One output chunk of the cluster's size avoids
   * zlib's default 16 KiB chunks and the copies that joining them costs.
   */
  async inflateRaw(input, outputSize) {
    inflateRawAsync ??= promisify(inflateRaw);
    return inflateRawAsync(input, {
      finishFlush: constants.Z_SYNC_FLUSH,
      maxOutputLength: Math.max(outputSize, 64),
      chunkSize: Math.max(outputSize, 64),
    });
  },
  zstdDecompress: portableCodecs.zstdDecompress,
};
