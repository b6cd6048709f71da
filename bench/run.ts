/**
 * Runs the benchmarks and writes a markdown report to bench/results/ (dated file + latest.md), printing it too.
 *
 *   npm run bench                          issue 10's table (from the repository root or bench/); `all` for every benchmark
 *   npm run bench -- convert-raw           one (or several) by name
 *   node --import tsx bench/run.ts [names] [--runs N] [--cold] [--build] [--no-save] [--clean]
 *
 * See bench/README.md.
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { commitRebase } from './commit-rebase.js';
import { convertRaw } from './convert-raw.js';
import { map } from './map.js';
import { vmSnapshot } from './vm-snapshot.js';
import { convertQcow2 } from './convert-qcow2.js';
import { convertCloud } from './convert-cloud.js';
import { snapshot } from './snapshot.js';
import { ROW_KEYS, table } from './table.js';
import type { BenchContext, BenchResult, Benchmark } from './lib/bench.js';
import { describeEnvironment } from './lib/env.js';
import { benchTempDir, cleanImageCache, imageCacheDir } from './lib/images.js';
import { dropCachesUnavailable, formatCommand, hasGnuTime, type CacheMode } from './lib/process.js';
import { renderReport } from './lib/report.js';

const BENCHMARKS: Benchmark[] = [table, convertRaw, map, convertQcow2, convertCloud, snapshot, commitRebase, vmSnapshot];

const benchDir = dirname(fileURLToPath(import.meta.url));
const repoRoot = resolve(benchDir, '..');

const USAGE = `usage: run.ts [BENCHMARK...|all] [--only KEY,...] [--runs N] [--cold | --warm] [--build] [--no-save] [--clean]

  BENCHMARK   ${BENCHMARKS.map((b) => b.name).join(', ')}, or all (default: table, issue 10's whole table)
  --only K,.. table rows to run: ${ROW_KEYS.join(', ')}
  --runs N    timed runs per tool and case (default: table 3, convert-raw 5, map 10)
  --cold      drop the page cache before every run (needs root); default --warm
  --build     build qcowkit first (npm run build: tsc -b, then the CLI bundle)
  --no-save   print the report without writing bench/results/
  --clean     delete the cached images (${imageCacheDir()}); alone, only that`;

interface Options {
  names: string[];
  only?: string[];
  runs?: number;
  mode: CacheMode;
  build: boolean;
  save: boolean;
  clean: boolean;
}

function parseArgs(argv: string[]): Options {
  const options: Options = { names: [], mode: 'warm', build: false, save: true, clean: false };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const [flag, inline] = arg.startsWith('--') && arg.includes('=') ? [arg.slice(0, arg.indexOf('=')), arg.slice(arg.indexOf('=') + 1)] : [arg, undefined];
    switch (flag) {
      case '--runs': {
        const value = Number(inline ?? argv[++i]);
        if (!Number.isInteger(value) || value < 1) throw new Error('--runs needs a positive integer');
        options.runs = value;
        break;
      }
      case '--only': {
        const keys = String(inline ?? argv[++i] ?? '').split(',').filter(Boolean);
        const unknown = keys.filter((k) => !(ROW_KEYS as readonly string[]).includes(k));
        if (keys.length === 0 || unknown.length > 0) throw new Error(`--only takes table rows: ${ROW_KEYS.join(', ')}${unknown.length > 0 ? ` (not: ${unknown.join(', ')})` : ''}`);
        options.only = keys;
        break;
      }
      case '--cold':
        options.mode = 'cold';
        break;
      case '--warm':
        options.mode = 'warm';
        break;
      case '--build':
        options.build = true;
        break;
      case '--no-save':
        options.save = false;
        break;
      case '--clean':
        options.clean = true;
        break;
      case '--help':
      case '-h':
        console.log(USAGE);
        process.exit(0);
      default:
        if (arg.startsWith('-')) throw new Error(`unknown option ${arg}\n${USAGE}`);
        if (arg === 'all') {
          options.names.push(...BENCHMARKS.map((b) => b.name));
          break;
        }
        if (!BENCHMARKS.some((b) => b.name === arg)) throw new Error(`unknown benchmark '${arg}' (have: ${BENCHMARKS.map((b) => b.name).join(', ')})`);
        options.names.push(arg);
    }
  }
  return options;
}

function stamp(date: Date): string {
  const p = (n: number): string => String(n).padStart(2, '0');
  return `${date.getFullYear()}-${p(date.getMonth() + 1)}-${p(date.getDate())}-${p(date.getHours())}${p(date.getMinutes())}`;
}

function main(): void {
  const args = process.argv.slice(2);
  const options = parseArgs(args);
  const log = (line: string): void => void process.stderr.write(`${line}\n`);

  if (options.clean) {
    const removed = cleanImageCache();
    log(removed.length > 0 ? `removed ${removed.join(', ')}` : 'no cached images');
    if (options.names.length === 0) return;
  }
  if (options.build) {
    log('building qcowkit: npm run build (tsc -b, then the CLI bundle)');
    const build = spawnSync('npm', ['run', 'build'], { cwd: repoRoot, stdio: ['ignore', 'inherit', 'inherit'] });
    if (build.status !== 0) throw new Error('build failed');
  }
  if (options.mode === 'cold') {
    const why = dropCachesUnavailable();
    if (why) throw new Error(`--cold: ${why}`);
  }
  const env = describeEnvironment(repoRoot);
  if (env.missingBuild) throw new Error(env.missingBuild);
  if (env.staleBuild) log(`WARNING: ${env.staleBuild}`);
  if (!hasGnuTime()) log('WARNING: /usr/bin/time (GNU time) not found: peak RSS and CPU time will be n/a. On Debian: apt-get install -y time');

  const selected = options.names.length === 0 ? [table] : BENCHMARKS.filter((b) => options.names.includes(b.name));
  const workDir = join(benchTempDir(), `work-${process.pid}`);
  mkdirSync(workDir, { recursive: true });
  const ctx: BenchContext = { runs: options.runs, ...(options.only === undefined ? {} : { only: options.only }), mode: options.mode, repoRoot, workDir, qcowkit: ['packages/cli/bin/qcowkit.js'], log };
  const startedAt = new Date();
  const loadStart = loadavg()[0]!;
  const results: BenchResult[] = [];
  try {
    for (const bench of selected) {
      log(`${bench.name}:`);
      results.push(bench.run(ctx));
    }
  } finally {
    rmSync(workDir, { recursive: true, force: true });
  }

  const invoked = process.env.npm_lifecycle_event === 'bench' ? `npm run -w bench bench${args.length > 0 ? ` -- ${formatCommand(args)}` : ''}` : `node --import tsx ${relative(repoRoot, fileURLToPath(import.meta.url))}${args.length > 0 ? ` ${formatCommand(args)}` : ''}`;
  const report = renderReport({ startedAt, mode: options.mode, env, invocation: invoked, load: { start: loadStart, end: loadavg()[0]!, cpus: cpus().length } }, results);
  process.stdout.write(`\n${report}`);
  if (options.save) {
    const dir = join(benchDir, 'results');
    mkdirSync(dir, { recursive: true });
    const file = join(dir, `${stamp(startedAt)}-${selected.map((b) => b.name).join('+')}-${options.mode}.md`);
    writeFileSync(file, report);
    copyFileSync(file, join(dir, 'latest.md'));
    log(`\nwrote ${relative(repoRoot, file)} and bench/results/latest.md`);
  }
}

try {
  main();
} catch (error) {
  process.stderr.write(`bench: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exitCode = 1;
}
