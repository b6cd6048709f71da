import { constants, inflateRawSync } from 'node:zlib';
import type { CompressionCodecs } from '../engine/compression.js';
import { portableCodecs } from '../engine/portable-codecs.js';

/** node:zlib's native inflate (several times faster than pure JS); zstd stays on the WASM build. */
export const nodeCodecs: CompressionCodecs = {
  inflateRaw(input, outputSize) {
    // Sync flush: qemu's stream may stop without a final block marker past what one cluster needs.
    return inflateRawSync(input, { finishFlush: constants.Z_SYNC_FLUSH, maxOutputLength: Math.max(outputSize, 64) });
  },
  zstdDecompress: portableCodecs.zstdDecompress,
};
