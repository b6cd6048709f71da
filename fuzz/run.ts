/**
 * Coverage-guided fuzzing of the qcow2 engine (see worker.ts for the loop, instrument.ts for the coverage, and
 * targets.ts for what is fuzzed).
 *
 *   npm run build && node --import tsx fuzz/run.ts [--targets open,read,map,check,snapshots] [--runs N per target]
 *       [--seconds S per target] [--jobs J] [--seed N]
 *
 * Seeds: the fixture corpus (fixtures/corpus, fixtures/generated) and fuzz/regressions. Findings are written to
 * fuzz/findings/ (the input, and a .txt with the error); fix each, then move the input to fuzz/regressions/,
 * which the test suite replays (fuzz/regressions.test.ts).
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import { instrumentEngine, ROOT } from './instrument.js';

export const TARGETS = ['open', 'read', 'map', 'check', 'snapshots'];
const MAX_LENGTH = 256 * 1024;
const HANG_MS = 20_000;

export interface FuzzOptions {
  targets: string[];
  runs: number;
  seconds: number;
  jobs: number;
  seed: number;
  /** Where findings are written (default fuzz/findings). */
  findingsDir?: string;
  log?: (line: string) => void;
}

export interface Finding {
  target: string;
  file: string;
  message: string;
}

export interface FuzzResult {
  executions: Record<string, number>;
  covered: Record<string, number>;
  findings: Finding[];
  edges: number;
  seconds: number;
}

/** Seed inputs: qcow2 files of the fixture corpus and the regression set, up to 1 MiB each. */
export function seedInputs(): Uint8Array[] {
  const seeds: Uint8Array[] = [];
  for (const dir of ['fixtures/corpus', 'fixtures/generated', 'fuzz/regressions']) {
    const path = join(ROOT, dir);
    if (!existsSync(path)) continue;
    for (const name of readdirSync(path).sort()) {
      const file = join(path, name);
      if (!statSync(file).isFile() || !/\.(qcow2|img|bin)$/.test(name) || statSync(file).size > MAX_LENGTH) continue;
      seeds.push(new Uint8Array(readFileSync(file)));
    }
  }
  return seeds;
}

function runTarget(entry: string, target: string, edges: number, seeds: Uint8Array[], options: FuzzOptions, seed: number, onFinding: (input: Uint8Array, message: string) => void): Promise<{ executions: number; covered: number }> {
  return new Promise((resolve, reject) => {
    const shared = new SharedArrayBuffer(8 + MAX_LENGTH);
    const counters = new Int32Array(shared, 0, 2);
    const worker = new Worker(new URL('./worker-boot.mjs', import.meta.url), {
      workerData: { engineEntry: entry, target, edges, seeds, seed, maxLength: MAX_LENGTH, runs: options.runs, millis: options.seconds * 1000, shared },
      resourceLimits: { maxOldGenerationSizeMb: 2048 },
    });
    let covered = 0;
    let last = -1;
    let lastChange = Date.now();
    const inFlight = (): Uint8Array => new Uint8Array(shared, 8, Atomics.load(counters, 1)).slice();
    const watchdog = setInterval(() => {
      const executions = Atomics.load(counters, 0);
      if (executions !== last) {
        last = executions;
        lastChange = Date.now();
      } else if (Date.now() - lastChange > HANG_MS) {
        clearInterval(watchdog);
        onFinding(inFlight(), `hang: one execution ran over ${HANG_MS / 1000} s`);
        void worker.terminate().then(() => resolve({ executions, covered }));
      }
    }, 1000);
    worker.on('message', (message: { kind: string; input?: Uint8Array; finding?: string; covered?: number; executions?: number }) => {
      if (message.kind === 'finding') onFinding(message.input!, message.finding!);
      else if (message.kind === 'corpus') covered = message.covered!;
      else if (message.kind === 'done') {
        clearInterval(watchdog);
        resolve({ executions: message.executions!, covered: message.covered! });
      }
    });
    worker.on('error', (error: Error & { code?: string }) => {
      clearInterval(watchdog);
      if (error.code === 'ERR_WORKER_OUT_OF_MEMORY') {
        onFinding(inFlight(), `out of memory: ${error.message}`);
        resolve({ executions: Atomics.load(counters, 0), covered });
      } else {
        reject(error);
      }
    });
  });
}

export async function runFuzz(options: FuzzOptions): Promise<FuzzResult> {
  const log = options.log ?? ((line: string) => console.log(line));
  const started = Date.now();
  const build = join(ROOT, 'fuzz/.build/qcow2');
  const edges = await instrumentEngine(build);
  const entry = pathToFileURL(join(build, 'dist/entries/engine.js')).href;
  const seeds = seedInputs();
  log(`fuzz: ${edges} edges instrumented, ${seeds.length} seed inputs, targets ${options.targets.join(', ')}`);
  const findingsDir = options.findingsDir ?? join(ROOT, 'fuzz/findings');
  const findings: Finding[] = [];
  const signatures = new Set<string>();
  const executions: Record<string, number> = {};
  const covered: Record<string, number> = {};
  const queue = [...options.targets];
  const workers = Array.from({ length: Math.max(1, options.jobs) }, async (_, job) => {
    for (let target = queue.shift(); target !== undefined; target = queue.shift()) {
      const result = await runTarget(entry, target, edges, seeds, options, options.seed + job * 7919 + target.length, (input, message) => {
        // One finding per distinct error and place: the message's first line and the first stack frame in the engine.
        const frame = /\n\s+at .*?(dist\/[^)]+)/.exec(message)?.[1]?.replace(/:\d+\)?$/, '') ?? '';
        const signature = `${target}|${message.split('\n')[0]!.replace(/\d+/g, 'N')}|${frame}`;
        if (signatures.has(signature)) return;
        signatures.add(signature);
        mkdirSync(findingsDir, { recursive: true });
        const hash = createHash('sha1').update(input).digest('hex').slice(0, 10);
        const file = join(findingsDir, `${target}-${hash}.qcow2`);
        writeFileSync(file, input);
        writeFileSync(`${file}.txt`, `${target}\n${message}\n`);
        findings.push({ target, file, message: message.split('\n')[0]! });
        log(`FINDING ${target}: ${message.split('\n')[0]} (${file})`);
      });
      executions[target] = result.executions;
      covered[target] = result.covered;
      log(`fuzz ${target}: ${result.executions} executions, ${result.covered} edges covered`);
    }
  });
  await Promise.all(workers);
  return { executions, covered, findings, edges, seconds: (Date.now() - started) / 1000 };
}

function option(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const result = await runFuzz({
    targets: (option('--targets') ?? TARGETS.join(',')).split(','),
    runs: Number(option('--runs') ?? 200_000),
    seconds: Number(option('--seconds') ?? 3600),
    jobs: Number(option('--jobs') ?? 1),
    seed: Number(option('--seed') ?? Date.now() % 1_000_000),
  });
  const total = Object.values(result.executions).reduce((a, b) => a + b, 0);
  console.log(`\n${total} executions in ${result.seconds.toFixed(0)} s (${Object.entries(result.executions).map(([t, n]) => `${t} ${n}`).join(', ')}), ${result.findings.length} findings`);
  process.exitCode = result.findings.length > 0 ? 1 : 0;
}
