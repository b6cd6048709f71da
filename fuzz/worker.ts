/**
 * One fuzzing worker: a libFuzzer-style loop in JavaScript over one target of the instrumented engine.
 *
 * Jazzer.js's libFuzzer addon cannot load on this machine (its prebuilt linux-x64 binary needs glibc 2.38;
 * Debian 12 has 2.36), so the loop is ours, fed by Jazzer.js's instrumentation (see instrument.ts):
 * - coverage: every edge counts its hits in `counters`; an input that reaches a new (edge, hit-count bucket)
 *   pair joins the corpus, as in libFuzzer and AFL;
 * - compare feedback: constants the code compares input-derived values with are kept in a dictionary, and the
 *   mutator writes them into inputs (big-endian, as qcow2 stores numbers);
 * - mutations: bit flips, random and "interesting" bytes and 32/64-bit words, qcow2 header fields, dictionary
 *   words, chunk copies, crossover with another corpus input, truncation and growth.
 *
 * Findings (any error other than Qcow2Error, a promise that does not settle, an allocation far beyond the
 * input's size) go to the parent with the input; a synchronous hang is caught by the parent's watchdog, which
 * reads the input in flight from shared memory.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { fuzzTargets, isExpected, type EngineModule } from './targets.js';

interface WorkerData {
  engineEntry: string;
  target: string;
  edges: number;
  seeds: Uint8Array[];
  seed: number;
  maxLength: number;
  /** Stop after this many executions or this many milliseconds, whichever first. */
  runs: number;
  millis: number;
  /** [0] executions, [1] length of the input in flight; then the input's bytes. */
  shared: SharedArrayBuffer;
}

const data = workerData as WorkerData;
const sharedCounters = new Int32Array(data.shared, 0, 2);
const inFlight = new Uint8Array(data.shared, 8);

/**
 * Memory an input of at most maxLength bytes may leave allocated after it ran (qemu's limits are per table:
 * far below this). A larger transient allocation either fails (RangeError: a finding) or shows here.
 */
const MEMORY_LIMIT = 256 * 1024 * 1024;
class AllocationFinding extends Error {}
const NativeUint8Array = Uint8Array;

// Jazzer.js's instrumentation calls these (see instrument.ts).
let counters = new NativeUint8Array(Math.max(1, data.edges));
const dictionary: number[] = [];
const dictionarySeen = new Set<number>();
function remember(value: unknown): void {
  if (dictionary.length >= 4096) return;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > Number.MAX_SAFE_INTEGER || dictionarySeen.has(value)) return;
  dictionarySeen.add(value);
  if (dictionary.length < 4096) dictionary.push(value);
}
const compare = (a: unknown, b: unknown, operator: string): boolean => {
  switch (operator) {
    case '==': return a == b; // eslint-disable-line eqeqeq
    case '===': return a === b;
    case '!=': return a != b; // eslint-disable-line eqeqeq
    case '!==': return a !== b;
    case '<': return (a as number) < (b as number);
    case '<=': return (a as number) <= (b as number);
    case '>': return (a as number) > (b as number);
    case '>=': return (a as number) >= (b as number);
    default: throw new Error(`unknown operator ${operator}`);
  }
};
(globalThis as Record<string, unknown>)['Fuzzer'] = {
  coverageTracker: {
    incrementCounter(id: number): void {
      if (id >= counters.length) {
        const grown = new NativeUint8Array(id * 2);
        grown.set(counters);
        counters = grown;
      }
      if (counters[id] !== 255) counters[id]!++;
    },
  },
  tracer: {
    traceStrCmp: (a: unknown, b: unknown, operator: string) => compare(a, b, operator),
    traceNumberCmp(a: unknown, b: unknown, operator: string): boolean {
      const result = compare(a, b, operator);
      if (!result || operator === '!==' || operator === '!=') {
        remember(a);
        remember(b);
      }
      return result;
    },
    /** A switch case's test: the case value itself, seen against the discriminant. */
    traceAndReturn(_current: unknown, target: unknown): unknown {
      remember(target);
      return target;
    },
  },
};

function xorshift(seed: number): () => number {
  let s = seed || 1;
  return () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) / 0x100000000;
  };
}
const random = xorshift(data.seed);
const below = (n: number): number => Math.floor(random() * n);

/** AFL's hit-count buckets: a new bucket for an edge is new behaviour. */
function bucket(hits: number): number {
  return hits === 0 ? 0 : hits === 1 ? 1 : hits === 2 ? 2 : hits === 3 ? 4 : hits < 8 ? 8 : hits < 16 ? 16 : hits < 32 ? 32 : hits < 128 ? 64 : 128;
}
let seen = new NativeUint8Array(counters.length);
let covered = 0;
/** Merges this run's counters into `seen`; true when something new was reached. */
function newCoverage(): boolean {
  if (seen.length < counters.length) {
    const grown = new NativeUint8Array(counters.length);
    grown.set(seen);
    seen = grown;
  }
  let fresh = false;
  for (let i = 0; i < counters.length; i++) {
    const hits = counters[i]!;
    if (hits === 0) continue;
    const b = bucket(hits);
    if ((seen[i]! & b) === 0) {
      if (seen[i] === 0) covered++;
      seen[i]! |= b;
      fresh = true;
    }
  }
  return fresh;
}

/** Header fields (offset, width) a structure-aware mutation aims at. */
const HEADER_FIELDS: Array<[number, 4 | 8]> = [[4, 4], [8, 8], [16, 4], [20, 4], [24, 8], [32, 4], [36, 4], [40, 8], [48, 8], [56, 4], [60, 4], [64, 8], [72, 8], [80, 8], [88, 8], [96, 4], [100, 4]];
const INTERESTING = [0, 1, 2, 7, 8, 9, 16, 21, 63, 64, 104, 112, 127, 128, 255, 256, 511, 512, 513, 4096, 65535, 65536, 0x7fffffff, 0x80000000, 0xffffffff];

function setWord(bytes: Uint8Array, at: number, width: 4 | 8, value: number): void {
  if (at + width > bytes.length) return;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (width === 4) view.setUint32(at, value >>> 0);
  else view.setBigUint64(at, BigInt(Math.max(0, Math.min(value, Number.MAX_SAFE_INTEGER))) | (random() < 0.05 ? 1n << 63n : random() < 0.05 ? 1n << 62n : 0n));
}
function getWord(bytes: Uint8Array, at: number, width: 4 | 8): number {
  if (at + width > bytes.length) return 0;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return width === 4 ? view.getUint32(at) : Number(view.getBigUint64(at) & 0x1fffffffffffffn);
}

function mutateOnce(input: Uint8Array, corpus: Uint8Array[]): Uint8Array {
  let bytes = input;
  const at = (width = 1): number => below(Math.max(1, bytes.length - width + 1));
  const aligned = (width: 4 | 8): number => (below(Math.max(1, Math.floor(bytes.length / 8))) * 8 + (width === 4 && random() < 0.5 ? 4 : 0));
  switch (below(12)) {
    case 0: if (bytes.length > 0) bytes[at()]! ^= 1 << below(8); break;
    case 1: if (bytes.length > 0) bytes[at()] = below(256); break;
    case 2: if (bytes.length > 0) bytes[at()] = [0, 0xff, 0x80, 0x7f, 1][below(5)]!; break;
    case 3: { const w = random() < 0.5 ? 4 : 8; setWord(bytes, aligned(w), w, INTERESTING[below(INTERESTING.length)]!); break; }
    case 4: { const w = random() < 0.5 ? 4 : 8; const p = aligned(w); setWord(bytes, p, w, getWord(bytes, p, w) + [1, -1, 8, -8, 512, -512, 65536][below(7)]!); break; }
    case 5: case 6: { const [p, w] = HEADER_FIELDS[below(HEADER_FIELDS.length)]!; const old = getWord(bytes, p, w);
      setWord(bytes, p, w, [INTERESTING[below(INTERESTING.length)]!, old + 1, old - 1, old * 2, bytes.length, dictionary[below(dictionary.length)] ?? 0][below(6)]!); break; }
    case 7: if (dictionary.length > 0) { const w = random() < 0.5 ? 4 : 8; setWord(bytes, random() < 0.5 ? aligned(w) : at(w), w, dictionary[below(dictionary.length)]!); } break;
    case 8: { if (bytes.length < 16) break; const len = 1 + below(Math.min(512, bytes.length / 2)); const from = at(len); bytes.copyWithin(at(len), from, from + len); break; }
    case 9: { const other = corpus[below(corpus.length)]!; if (other.length === 0) break; const len = 1 + below(Math.min(4096, other.length)); const from = below(other.length - len + 1);
      const to = Math.min(bytes.length, below(Math.max(1, bytes.length))); const out = new NativeUint8Array(Math.max(bytes.length, to + len)); out.set(bytes); out.set(other.subarray(from, from + len), to); bytes = out; break; }
    case 10: if (bytes.length > 1) bytes = bytes.slice(0, below(bytes.length)); break;
    default: if (bytes.length < data.maxLength) { const out = new NativeUint8Array(Math.min(data.maxLength, bytes.length + 1 + below(65536))); out.set(bytes); bytes = out; }
  }
  return bytes.length > data.maxLength ? bytes.slice(0, data.maxLength) : bytes;
}

function mutate(input: Uint8Array, corpus: Uint8Array[]): Uint8Array {
  let bytes: Uint8Array = input.slice();
  const count = 1 << below(4);
  for (let i = 0; i < count; i++) bytes = mutateOnce(bytes, corpus);
  return bytes;
}

const ASYNC_LIMIT_MS = 5000;
async function runOne(target: (data: Uint8Array) => Promise<void>, engine: EngineModule, input: Uint8Array): Promise<string | undefined> {
  counters.fill(0);
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    await Promise.race([
      target(input),
      new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new AllocationFinding('hang: the target did not settle within 5 s')), ASYNC_LIMIT_MS))),
    ]);
    return process.memoryUsage().arrayBuffers > MEMORY_LIMIT ? `allocation: ${process.memoryUsage().arrayBuffers} bytes of buffers held after the run` : undefined;
  } catch (error) {
    if (isExpected(engine, error)) return undefined;
    return error instanceof Error ? `${error.name}: ${error.message}\n${error.stack ?? ''}` : String(error);
  } finally {
    clearTimeout(timer);
  }
}

const engine = (await import(data.engineEntry)) as EngineModule;
// Expected errors are thrown by the thousand: source-mapped stack traces (tsx turns them on) would cost more
// than the engine's work.
process.setSourceMapsEnabled(false);
const target = fuzzTargets(engine)[data.target];
if (target === undefined) throw new Error(`no fuzz target '${data.target}'`);
let escaped: unknown;
process.on('unhandledRejection', (error) => (escaped = error));

const corpus: Uint8Array[] = [];
let executions = 0;
const started = Date.now();
async function execute(input: Uint8Array): Promise<void> {
  inFlight.set(input.subarray(0, inFlight.length));
  Atomics.store(sharedCounters, 1, Math.min(input.length, inFlight.length));
  let finding = await runOne(target!, engine, input);
  if (finding === undefined && escaped !== undefined) {
    finding = `unhandled rejection: ${escaped instanceof Error ? `${escaped.message}\n${escaped.stack}` : String(escaped)}`;
    escaped = undefined;
  }
  executions++;
  Atomics.store(sharedCounters, 0, executions);
  if (finding !== undefined) parentPort!.postMessage({ kind: 'finding', input, finding });
  if (newCoverage()) {
    corpus.push(input);
    parentPort!.postMessage({ kind: 'corpus', input, covered });
  }
}

for (const seed of data.seeds) await execute(seed.length > data.maxLength ? seed.slice(0, data.maxLength) : seed);
if (corpus.length === 0) corpus.push(data.seeds[0] ?? new NativeUint8Array(0));
while (executions < data.runs && Date.now() - started < data.millis) {
  // Favour recent finds (they are where the frontier is), as libFuzzer's entropic schedule roughly does.
  const pick = random() < 0.5 ? corpus[corpus.length - 1 - below(Math.min(corpus.length, 16))]! : corpus[below(corpus.length)]!;
  await execute(mutate(pick, corpus));
}
parentPort!.postMessage({ kind: 'done', executions, covered, corpus: corpus.length, dictionary: dictionary.length });
