/** The shape of a benchmark and the one thing they all do: time qemu-img and qcowkit on the same input. */
import type { BuiltImage } from './images.js';
import { measureInterleaved, type CacheMode, type Contender, type Measurement } from './process.js';

export interface BenchContext {
  /** Timed runs per contender; undefined = the benchmark's default. */
  runs: number | undefined;
  mode: CacheMode;
  /** The monorepo root: every command runs with this as its working directory. */
  repoRoot: string;
  /** Scratch space for outputs (removed by run.ts afterwards). */
  workDir: string;
  /** Only these cases, by key (a benchmark that has keys, like table's rows); undefined = all. */
  only?: string[];
  /** How to start qcowkit: the bin users run, ["packages/cli/bin/qcowkit.js"] (relative to repoRoot). */
  qcowkit: string[];
  log(line: string): void;
}

export interface CaseResult {
  name: string;
  image?: BuiltImage;
  runs: number;
  qemu: Measurement;
  qcowkit: Measurement;
  /** qcowkit median / qemu-img median: lower is better, target <= 1.0. */
  ratio: number;
  /** Outcome of comparing the two tools' outputs once: true = same, false = different, undefined = not checked. */
  outputsMatch?: boolean;
  /** Lines about the check and the outputs (sizes, allocation, first difference). */
  checks: string[];
}

export interface BenchResult {
  name: string;
  title: string;
  measures: string;
  cases: CaseResult[];
  notes: string[];
  /** Markdown lines printed before everything else in the report (the table benchmark's summary). */
  table?: string[];
}

export interface Benchmark {
  name: string;
  title: string;
  /** One paragraph for the report and README: what is timed, and what it stresses. */
  measures: string;
  defaultRuns: number;
  run(ctx: BenchContext): BenchResult;
}

export interface Pair {
  /** Arguments after the program name, for each tool. */
  qemuArgs: string[];
  qcowkitArgs: string[];
  /** Each tool's stdout goes to this file (for output checks), or is discarded. */
  qemuStdout?: string;
  qcowkitStdout?: string;
  /** Untimed, before every run of each tool (e.g. delete its previous output). */
  beforeQemu?: () => void;
  beforeQcowkit?: () => void;
}

/** Times the two tools against each other (interleaved, same mode), and returns the case without checks yet. */
export function comparePair(ctx: BenchContext, name: string, runs: number, pair: Pair, image?: BuiltImage): CaseResult {
  ctx.log(`  ${name}: ${runs} runs each, ${ctx.mode}`);
  const contenders: Contender[] = [
    { label: 'qemu-img', spec: { argv: ['qemu-img', ...pair.qemuArgs], cwd: ctx.repoRoot, stdoutPath: pair.qemuStdout }, before: pair.beforeQemu },
    { label: 'qcowkit', spec: { argv: [...ctx.qcowkit, ...pair.qcowkitArgs], cwd: ctx.repoRoot, stdoutPath: pair.qcowkitStdout }, before: pair.beforeQcowkit },
  ];
  const [qemu, qcowkit] = measureInterleaved(contenders, { runs, mode: ctx.mode, log: ctx.log });
  return { name, image, runs, qemu: qemu!, qcowkit: qcowkit!, ratio: qcowkit!.medianMs / qemu!.medianMs, checks: [] };
}
