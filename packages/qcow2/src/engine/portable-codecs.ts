import { inflateSync } from 'fflate';
import * as zstd from '@bokuweb/zstd-wasm';
import type { CompressionCodecs } from './compression.js';

let zstdReady: Promise<void> | undefined;

/**
 * Codecs that run anywhere: fflate (pure JS deflate) and zstd compiled to WASM. In a browser the zstd WASM
 * build fetches its module on first use.
 */
export const portableCodecs: CompressionCodecs = {
  inflateRaw(input, outputSize) {
    return inflateSync(input, { out: new Uint8Array(outputSize) });
  },
  async zstdDecompress(frame, outputSize) {
    zstdReady ??= zstd.init();
    await zstdReady;
    return zstd.decompress(frame, { defaultHeapSize: outputSize });
  },
};
