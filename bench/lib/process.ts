/**
 * Whole-process measurements: run a command N times (spawned with an argument array, never through a shell)
 * and report wall time (median, min), CPU time and peak RSS.
 *
 * Wall time is measured here with process.hrtime around spawnSync. Peak RSS and CPU time come from GNU time
 * (`/usr/bin/time -f`), which wraps the command: spawnSync reports no rusage of its child, and
 * process.resourceUsage() only describes this process. Without /usr/bin/time (Debian: `apt-get install -y
 * time`) wall times are still measured and RSS/CPU are reported as "n/a" with a warning; nothing is faked.
 */
import { spawnSync } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { max, median, min } from './stats.js';

export const GNU_TIME = '/usr/bin/time';

export interface ProcessSpec {
  /** argv[0] is looked up in PATH by spawn; no shell is involved. */
  argv: string[];
  cwd?: string;
  /** The child's stdout goes to this file (truncated first); without it, stdout is discarded. */
  stdoutPath?: string;
  env?: NodeJS.ProcessEnv;
}

export interface ProcessSample {
  wallMs: number;
  /** CPU time of the process and its waited-for children; undefined without GNU time. */
  userMs?: number;
  sysMs?: number;
  /** Peak resident set size of the process (largest of it and its children), KiB; undefined without GNU time. */
  maxRssKiB?: number;
}

let gnuTimeChecked: boolean | undefined;

/** Whether GNU time is usable (it must understand -f and -o; busybox's time does not). */
export function hasGnuTime(): boolean {
  if (gnuTimeChecked === undefined) {
    gnuTimeChecked = false;
    if (existsSync(GNU_TIME)) {
      const probe = spawnSync(GNU_TIME, ['-f', '%M', '--', 'true'], { encoding: 'utf8' });
      gnuTimeChecked = probe.status === 0 && /^\d+\s*$/m.test(probe.stderr);
    }
  }
  return gnuTimeChecked;
}

let sequence = 0;

/** Runs the command once, throws (with its stderr) when it fails. */
export function runMeasured(spec: ProcessSpec): ProcessSample {
  const useTime = hasGnuTime();
  const timeFile = join(tmpdir(), `qcowkit-bench-time-${process.pid}-${sequence++}.txt`);
  const argv = useTime ? [GNU_TIME, '-o', timeFile, '-f', '%M %U %S', '--', ...spec.argv] : spec.argv;
  const stdoutFd = spec.stdoutPath === undefined ? 'ignore' : openSync(spec.stdoutPath, 'w');
  let result: ReturnType<typeof spawnSync>;
  let wallMs: number;
  try {
    const start = process.hrtime.bigint();
    result = spawnSync(argv[0]!, argv.slice(1), {
      cwd: spec.cwd,
      env: spec.env ?? process.env,
      stdio: ['ignore', stdoutFd, 'pipe'],
      maxBuffer: 64 * 1024 * 1024,
    });
    wallMs = Number(process.hrtime.bigint() - start) / 1e6;
  } finally {
    if (typeof stdoutFd === 'number') closeSync(stdoutFd);
  }
  if (result.error) throw result.error;
  if (result.status !== 0) {
    rmSync(timeFile, { force: true });
    const stderr = result.stderr?.toString().trim() ?? '';
    throw new Error(`command failed (exit ${result.status ?? result.signal}): ${formatCommand(spec.argv)}\n${stderr}`);
  }
  if (!useTime) return { wallMs };
  const fields = readFileSync(timeFile, 'utf8').trim().split('\n').pop()!.split(/\s+/).map(Number);
  rmSync(timeFile, { force: true });
  const [rss, user, sys] = fields;
  return { wallMs, maxRssKiB: rss, userMs: user! * 1000, sysMs: sys! * 1000 };
}

/** Flushes dirty pages, so one run's writeback does not land in the next run's time. */
export function syncDisks(): void {
  spawnSync('sync', [], { stdio: 'ignore' });
}

/** Empties the page cache (needs root): `sync; echo 3 > /proc/sys/vm/drop_caches`. */
export function dropCaches(): void {
  syncDisks();
  writeFileSync('/proc/sys/vm/drop_caches', '3\n');
}

/** undefined if the page cache can be dropped here, else the reason it cannot. */
export function dropCachesUnavailable(): string | undefined {
  try {
    dropCaches();
    return undefined;
  } catch (error) {
    return `cannot write /proc/sys/vm/drop_caches (${(error as NodeJS.ErrnoException).code ?? String(error)}); cold mode needs root`;
  }
}

export type CacheMode = 'warm' | 'cold';

export interface Contender {
  /** "qemu-img" or "qcowkit". */
  label: string;
  spec: ProcessSpec;
  /** Runs before every run of this contender, untimed (e.g. delete the previous output file). */
  before?: () => void;
}

export interface Measurement {
  label: string;
  argv: string[];
  samples: ProcessSample[];
  medianMs: number;
  minMs: number;
  /** Median of user+sys CPU time, ms (NaN without GNU time). */
  medianCpuMs: number;
  /** Largest peak RSS over all runs, KiB (NaN without GNU time). */
  peakRssKiB: number;
}

export interface MeasureOptions {
  runs: number;
  mode: CacheMode;
  /** Called with a progress line per run. */
  log?: (line: string) => void;
}

/**
 * Measures the contenders against each other in the same conditions. Runs are interleaved, and the order
 * alternates (A B, B A, A B, ...), so a drift of the machine (thermal, other load, writeback) spreads over both.
 * warm: one untimed warm-up run per contender first, so the source image is in the page cache for every run.
 * cold: the page cache is dropped before every run (and there is no warm-up).
 * In both modes dirty pages are synced before each run.
 */
export function measureInterleaved(contenders: readonly Contender[], options: MeasureOptions): Measurement[] {
  const samples = contenders.map(() => [] as ProcessSample[]);
  const runOne = (index: number, timed: boolean, round: number): void => {
    const contender = contenders[index]!;
    contender.before?.();
    if (options.mode === 'cold') dropCaches();
    else syncDisks();
    const sample = runMeasured(contender.spec);
    if (timed) samples[index]!.push(sample);
    const rss = sample.maxRssKiB === undefined ? '' : `, ${(sample.maxRssKiB / 1024).toFixed(0)} MiB peak RSS`;
    options.log?.(`    ${timed ? `run ${round + 1}/${options.runs}` : 'warm-up'} ${contender.label}: ${sample.wallMs.toFixed(0)} ms${rss}`);
  };
  if (options.mode === 'warm') contenders.forEach((_, index) => runOne(index, false, -1));
  for (let round = 0; round < options.runs; round++) {
    const order = contenders.map((_, index) => index);
    if (round % 2 === 1) order.reverse();
    for (const index of order) runOne(index, true, round);
  }
  return contenders.map((contender, index) => {
    const list = samples[index]!;
    const walls = list.map((s) => s.wallMs);
    const cpu = list.map((s) => (s.userMs ?? Number.NaN) + (s.sysMs ?? Number.NaN));
    return {
      label: contender.label,
      argv: contender.spec.argv,
      samples: list,
      medianMs: median(walls),
      minMs: min(walls),
      medianCpuMs: median(cpu),
      peakRssKiB: max(list.map((s) => s.maxRssKiB ?? Number.NaN)),
    };
  });
}

/** A command line for humans to read and paste (POSIX shell quoting); the benchmark itself never uses a shell. */
export function formatCommand(argv: readonly string[]): string {
  return argv.map((arg) => (/^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replace(/'/g, `'\\''`)}'`)).join(' ');
}

/** Runs a helper command (image building, verification); returns stdout, throws with stderr on failure. */
export function runTool(argv: readonly string[], options: { cwd?: string; input?: string } = {}): string {
  const result = spawnSync(argv[0]!, argv.slice(1), { cwd: options.cwd, input: options.input, encoding: 'utf8', maxBuffer: 256 * 1024 * 1024 });
  if (result.error) throw result.error;
  if (result.status !== 0) throw new Error(`command failed (exit ${result.status ?? result.signal}): ${formatCommand(argv)}\n${result.stderr.trim()}`);
  return result.stdout;
}
