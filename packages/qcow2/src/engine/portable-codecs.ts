import type { CompressionCodecs } from './compression.js';

type Fflate = typeof import('fflate');
type Zstd = typeof import('@bokuweb/zstd-wasm');

let fflate: Promise<Fflate> | undefined;
let zstd: Promise<Zstd> | undefined;

/** The zstd WASM module, loaded and initialised on first use (a tool that never meets zstd never pays for it). */
export function loadZstd(): Promise<Zstd> {
  zstd ??= import('@bokuweb/zstd-wasm').then(async (module) => {
    await module.init();
    return module;
  });
  return zstd;
}

/**
 * Codecs that run anywhere: fflate (pure JS deflate) and zstd compiled to WASM, both imported only when the
 * first compressed cluster is read. In a browser the zstd WASM build fetches its module then.
 */
export const portableCodecs: CompressionCodecs = {
  async inflateRaw(input, outputSize) {
    fflate ??= import('fflate');
    return (await fflate).inflateSync(input, { out: new Uint8Array(outputSize) });
  },
  async zstdDecompress(frame, outputSize) {
    return (await loadZstd()).decompress(frame, { defaultHeapSize: outputSize });
  },
};
