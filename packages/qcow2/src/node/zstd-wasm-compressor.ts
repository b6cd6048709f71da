/**
 * zstd compression of clusters straight on the exports of the WASM build (@bokuweb/zstd-wasm), for the worker
 * threads and the main-thread fallback. The package's own compress() mallocs and frees in the WASM heap and
 * returns a fresh copy per call: a compression context per call halves the speed on 64 KiB clusters, and the
 * copies of clusters that do not shrink (random data) are garbage that left a thread tens of MiB larger. Here one
 * context, one input and one output buffer live in the WASM heap for all clusters, and only streams worth
 * storing are copied out. Where the package's module object cannot be reached (another layout), its public
 * API with a kept context does the same work, less frugally. Both give the frame ZSTD_compress gives.
 */
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { loadZstd } from '../engine/portable-codecs.js';

interface ZstdModule {
  HEAPU8: Uint8Array;
  _malloc(size: number): number;
  _ZSTD_createCCtx(): number;
  _ZSTD_compressBound(size: number): number;
  _ZSTD_isError(code: number): number;
  _ZSTD_compress_usingDict(cctx: number, dst: number, dstCapacity: number, src: number, srcSize: number, dict: number, dictSize: number, level: number): number;
}

/** Compresses one cluster (at most `maxInput` bytes): the frame, or undefined when it is `limit` bytes or more. */
export type ZstdClusterCompress = (cluster: Uint8Array, limit: number) => Uint8Array | undefined;

function wasmModule(): ZstdModule | undefined {
  try {
    const require = createRequire(import.meta.url);
    const { Module } = require(join(dirname(require.resolve('@bokuweb/zstd-wasm')), 'module.js')) as { Module?: Partial<ZstdModule> };
    return typeof Module?._ZSTD_compress_usingDict === 'function' && Module.HEAPU8 !== undefined ? (Module as ZstdModule) : undefined;
  } catch {
    return undefined;
  }
}

export async function zstdClusterCompressor(maxInput: number, level: number): Promise<ZstdClusterCompress> {
  const zstd = await loadZstd();
  const module = wasmModule();
  if (module === undefined) {
    const context = zstd.createCCtx();
    const empty = new Uint8Array(0);
    return (cluster, limit) => {
      const frame = zstd.compressUsingDict(context, cluster, empty, level);
      return frame.length < limit ? frame : undefined;
    };
  }
  const context = module._ZSTD_createCCtx();
  const bound = module._ZSTD_compressBound(maxInput);
  const input = module._malloc(maxInput);
  const output = module._malloc(bound);
  return (cluster, limit) => {
    if (cluster.length > maxInput) throw new RangeError(`cluster of ${cluster.length} bytes, more than ${maxInput}`);
    // HEAPU8 is re-read each call: the WASM memory may have grown (and been replaced) since.
    module.HEAPU8.set(cluster, input);
    const size = module._ZSTD_compress_usingDict(context, output, bound, input, cluster.length, 0, 0, level);
    if (module._ZSTD_isError(size)) throw new Error(`zstd compression failed (code ${size})`);
    return size < limit ? module.HEAPU8.slice(output, output + size) : undefined;
  };
}
