import { Qcow2Error } from '../errors.js';
import type { CompressionCodecs } from './compression.js';

type Fflate = typeof import('fflate');
type Zstd = typeof import('@bokuweb/zstd-wasm');

/**
 * Where the zstd WebAssembly module comes from: its bytes, or a URL to fetch them from. Browsers need one (a
 * bundler does not copy the module by itself); Node finds it beside the package.
 */
export type ZstdWasmSource = string | URL | ArrayBuffer | Uint8Array;

/** How long the zstd module may take to load before the read that needed it fails (never hang). */
const ZSTD_LOAD_TIMEOUT_MS = 30_000;

let fflate: Promise<Fflate> | undefined;
let zstd: Promise<Zstd> | undefined;

function unavailable(why: string, cause?: unknown): Qcow2Error {
  return new Qcow2Error('CODEC_UNAVAILABLE', `cannot load the zstd decoder: ${why}`, cause === undefined ? {} : { cause });
}

async function wasmBytes(source: ZstdWasmSource): Promise<ArrayBuffer | Uint8Array> {
  if (typeof source !== 'string' && !(source instanceof URL)) return source;
  let response: Response;
  try {
    response = await fetch(source);
  } catch (error) {
    throw unavailable(`${String(source)}: ${(error as Error).message}`, error);
  }
  if (!response.ok) throw unavailable(`${String(source)}: HTTP ${response.status}`);
  return response.arrayBuffer();
}

/** The host's WebAssembly object (typed here: the engine compiles without the DOM library). */
function wasmRuntime(): { compile(bytes: ArrayBuffer): Promise<unknown> } {
  const runtime = (globalThis as { WebAssembly?: { compile(bytes: ArrayBuffer): Promise<unknown> } }).WebAssembly;
  if (runtime === undefined) throw unavailable('this runtime has no WebAssembly');
  return runtime;
}

/**
 * The module reports a failed instantiation (no memory for a WebAssembly instance under an address-space limit,
 * bad bytes) only through console.warn, bound when it loads, and then waits forever. So console.warn is
 * wrapped while the module loads: such a message fails the load at once, anything else passes through.
 */
function watchModuleWarnings(): { failure: Promise<never>; restore: () => void } {
  let fail: (error: Qcow2Error) => void = () => {};
  const failure = new Promise<never>((_, reject) => (fail = reject));
  failure.catch(() => {});
  const warn = console.warn;
  console.warn = (...args: unknown[]): void => {
    const text = args.map(String).join(' ');
    const failed = /wasm compile failed: |failed to asynchronously prepare wasm: |Aborted\(/.exec(text);
    if (failed !== null) fail(unavailable(text.slice(failed.index + failed[0].length).replace(/\)$/, '').trim() || 'the WebAssembly module failed to start'));
    else warn(...args);
  };
  return { failure, restore: () => (console.warn = warn) };
}

async function initZstd(source: ZstdWasmSource | undefined): Promise<Zstd> {
  const watch = watchModuleWarnings();
  let module: Zstd;
  try {
    module = await import('@bokuweb/zstd-wasm');
  } catch (error) {
    throw unavailable((error as Error).message, error);
  } finally {
    // The module bound the wrapper when it loaded; console.warn itself is the caller's again.
    watch.restore();
  }
  let init: Promise<void>;
  if (source === undefined) init = module.init();
  else {
    const bytes = await wasmBytes(source);
    // The module's own loader only logs a compile failure and then waits forever: compile first, so bad bytes
    // (an HTML error page served as zstd.wasm) fail here.
    try {
      await wasmRuntime().compile(bytes instanceof Uint8Array ? bytes.slice().buffer : bytes);
    } catch (error) {
      throw unavailable(`not a WebAssembly module (${(error as Error).message})`, error);
    }
    init = (module.init as (path?: unknown) => Promise<void>)(bytes);
  }
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(unavailable(`not loaded after ${ZSTD_LOAD_TIMEOUT_MS / 1000} s`)), ZSTD_LOAD_TIMEOUT_MS);
  });
  try {
    await Promise.race([init, timeout, watch.failure]);
  } catch (error) {
    throw error instanceof Qcow2Error ? error : unavailable((error as Error).message, error);
  } finally {
    clearTimeout(timer);
  }
  return module;
}

/**
 * The zstd WASM module, loaded and initialised on first use (a tool that never meets zstd never pays for it).
 * The first caller's `source` wins; a failed load is forgotten, so a later call may try again.
 */
export function loadZstd(source?: ZstdWasmSource): Promise<Zstd> {
  zstd ??= initZstd(source).catch((error: unknown) => {
    zstd = undefined;
    throw error;
  });
  return zstd;
}

/**
 * Portable codecs whose zstd module comes from `zstdWasm` (see {@link ZstdWasmSource}); fflate for deflate.
 * A module that cannot be loaded fails the read with `CODEC_UNAVAILABLE`.
 */
export function portableCodecsWith(options: { zstdWasm?: ZstdWasmSource } = {}): CompressionCodecs {
  return {
    async inflateRaw(input, outputSize) {
      fflate ??= import('fflate');
      return (await fflate).inflateSync(input, { out: new Uint8Array(outputSize) });
    },
    async zstdDecompress(frame, outputSize) {
      return (await loadZstd(options.zstdWasm)).decompress(frame, { defaultHeapSize: outputSize });
    },
  };
}

/**
 * Codecs that run anywhere: fflate (pure JS deflate) and zstd compiled to WASM, both imported only when the
 * first compressed cluster is read. In a browser, prefer {@link portableCodecsWith} with the module's location.
 */
export const portableCodecs: CompressionCodecs = portableCodecsWith();
