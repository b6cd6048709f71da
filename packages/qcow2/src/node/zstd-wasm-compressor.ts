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
  _free(pointer: number): void;
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
    return typeof Module?._ZSTD_compress_usingDict === 'function' && typeof Module._free === 'function' && Module.HEAPU8 !== undefined ? (Module as ZstdModule) : undefined;
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

/**
 * Compresses the clusters packed back to back in `input` (`size` bytes each): their frames back to back in one
 * new buffer, and each frame's length (-1 where the frame would be `limit` bytes or more: left out).
 */
export type ZstdBatchCompress = (input: Uint8Array, size: number, limit: number) => { output: Uint8Array<ArrayBuffer>; lengths: Int32Array<ArrayBuffer> };

/**
 * The batch form, for the worker threads: the whole batch is copied into the WASM heap at once and its frames
 * compressed next to each other there, then copied out in one piece. One buffer per batch instead of one per
 * frame: per-frame copies are garbage that V8 frees late (they are outside its heap), which left each worker
 * tens of MiB larger. The frames are those ZSTD_compress gives, as from zstdClusterCompressor.
 */
export async function zstdBatchCompressor(level: number): Promise<ZstdBatchCompress> {
  const zstd = await loadZstd();
  const module = wasmModule();
  if (module === undefined) {
    const context = zstd.createCCtx();
    const empty = new Uint8Array(0);
    return (input, size, limit) => joinFrames(input, size, (cluster) => {
      const frame = zstd.compressUsingDict(context, cluster, empty, level);
      return frame.length < limit ? frame : undefined;
    });
  }
  const context = module._ZSTD_createCCtx();
  const input = wasmArea(module);
  const output = wasmArea(module);
  return (batch, size, limit) => {
    const count = Math.ceil(batch.length / size);
    const bound = module._ZSTD_compressBound(size);
    const inputArea = input.reserve(batch.length);
    const outputArea = output.reserve(count * bound);
    // HEAPU8 is read after the allocations: the WASM memory may have grown (and been replaced).
    module.HEAPU8.set(batch, inputArea);
    const lengths = new Int32Array(count);
    let at = 0;
    for (let i = 0; i < count; i++) {
      const length = Math.min(size, batch.length - i * size);
      const n = module._ZSTD_compress_usingDict(context, outputArea + at, bound, inputArea + i * size, length, 0, 0, level);
      if (module._ZSTD_isError(n)) throw new Error(`zstd compression failed (code ${n})`);
      // A frame not worth storing is overwritten by the next one.
      lengths[i] = n < limit ? n : -1;
      if (n < limit) at += n;
    }
    return { output: module.HEAPU8.slice(outputArea, outputArea + at), lengths };
  };
}

/** A buffer in the WASM heap, grown (reallocated) when a batch needs more. */
function wasmArea(module: ZstdModule): { reserve(bytes: number): number } {
  let pointer = 0;
  let capacity = 0;
  return {
    reserve(bytes) {
      if (bytes <= capacity) return pointer;
      if (pointer !== 0) module._free(pointer);
      pointer = module._malloc(bytes);
      if (pointer === 0) throw new Error(`zstd: no room for ${bytes} bytes in the WASM heap`);
      capacity = bytes;
      return pointer;
    },
  };
}

/** The batch form over a one-cluster compressor (the package's public API). */
function joinFrames(input: Uint8Array, size: number, compress: (cluster: Uint8Array) => Uint8Array | undefined): ReturnType<ZstdBatchCompress> {
  const count = Math.ceil(input.length / size);
  const lengths = new Int32Array(count);
  const frames: Uint8Array[] = [];
  let total = 0;
  for (let i = 0; i < count; i++) {
    const frame = compress(input.subarray(i * size, (i + 1) * size));
    lengths[i] = frame === undefined ? -1 : frame.length;
    if (frame !== undefined) {
      frames.push(frame);
      total += frame.length;
    }
  }
  const output = new Uint8Array(total);
  let at = 0;
  for (const frame of frames) {
    output.set(frame, at);
    at += frame.length;
  }
  return { output, lengths };
}
