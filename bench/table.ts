/**
 * table: issue 10's whole table in one run, qcowkit and qemu-img side by side, each row with its target. Every
 * row is a case of the topic benchmarks (convert-qcow2, convert-raw, snapshot, commit-rebase), measured the same
 * way: interleaved runs, median of `--runs` (default 3), whole processes, outputs checked once afterwards.
 *
 * Rows (keys for --only): raw-qcow2, qcow2-raw, qcow2-qcow2, zlib, zstd (2 GiB mixed: half incompressible data, a
 * fifth written zeros, the rest holes), check (200 GiB metadata-preallocated), snapshot (-c then -d on that image),
 * rebase (-b "": flatten a 2 GiB overlay), info (start-up: against `node -e 0`), memory (largest convert RSS).
 */
import { join } from 'node:path';
import { ensureChain, runCase } from './commit-rebase.js';
import { convertCase as convertQcow2Case, ensureMixedRaw } from './convert-qcow2.js';
import { convertCase as convertRawCase } from './convert-raw.js';
import type { BenchContext, BenchResult, Benchmark, CaseResult } from './lib/bench.js';
import { mixed2g } from './lib/catalog.js';
import { ensureImage, GiB, KiB } from './lib/images.js';
import { measureInterleaved, runTool } from './lib/process.js';
import { formatBytes, formatMs, formatRatio } from './lib/stats.js';
import { checkCase, preallocatedImage, writeCase } from './snapshot.js';

const prealloc200g = preallocatedImage('prealloc-200g', { virtualSize: 200 * GiB, clusterSize: 64 * KiB, snapshots: [] });
const prealloc200gSnap = preallocatedImage('prealloc-200g-snap', { virtualSize: 200 * GiB, clusterSize: 64 * KiB, snapshots: ['snap1'] });

export const ROW_KEYS = ['raw-qcow2', 'qcow2-raw', 'qcow2-qcow2', 'zlib', 'zstd', 'check', 'snapshot', 'rebase', 'info', 'memory'] as const;

interface Row {
  work: string;
  qemuMs: number;
  qcowkitMs: number;
  /** What the ratio is taken against, when not qemu-img (info: `node -e 0`). */
  ratio: number;
  target: string;
  met: boolean;
  note: string;
}

const ms = (c: CaseResult): string => `${formatMs(c.qcowkit.medianMs)} / ${formatMs(c.qemu.medianMs)}`;

function ratioRow(work: string, cases: CaseResult[], target: number): Row {
  const qcowkitMs = cases.reduce((n, c) => n + c.qcowkit.medianMs, 0);
  const qemuMs = cases.reduce((n, c) => n + c.qemu.medianMs, 0);
  const ratio = qcowkitMs / qemuMs;
  const outputs = cases.every((c) => c.outputsMatch !== false) ? 'outputs checked' : '**OUTPUTS DIFFER**';
  const mins = cases.map((c) => `min ${formatMs(c.qcowkit.minMs)} / ${formatMs(c.qemu.minMs)}`).join(', ');
  return { work, qemuMs, qcowkitMs, ratio, target: `≤ ${target.toFixed(2)}×`, met: ratio <= target && outputs === 'outputs checked', note: `${outputs}; ${mins}` };
}

export const table: Benchmark = {
  name: 'table',
  title: "issue 10's table: convert, compress, check, snapshot, rebase, start-up and memory against qemu-img",
  measures:
    'Each row is a case of the topic benchmarks (see their sections below): whole processes, spawn to exit, qemu-img and qcowkit ' +
    'alternating, the median of the timed runs; warm page cache. Ratio = qcowkit / qemu-img (info: qcowkit / `node -e 0`, ' +
    'the floor of any Node program). The snapshot row adds the medians of `snapshot -c` and `snapshot -d`, each on a fresh copy.',
  defaultRuns: 3,
  run(ctx: BenchContext): BenchResult {
    const runs = ctx.runs ?? this.defaultRuns;
    const want = (key: (typeof ROW_KEYS)[number]): boolean => ctx.only === undefined || ctx.only.includes(key);
    const cases: CaseResult[] = [];
    const rows: Row[] = [];
    const converts: CaseResult[] = [];
    const keep = (c: CaseResult, convert = false): CaseResult => {
      cases.push(c);
      if (convert) converts.push(c);
      return c;
    };

    const raw = want('raw-qcow2') || want('zlib') || want('zstd') ? ensureMixedRaw(ctx.log) : undefined;
    const qcow2 = want('qcow2-raw') || want('qcow2-qcow2') ? ensureImage(mixed2g, ctx.log) : undefined;
    if (want('raw-qcow2')) {
      const c = keep(convertQcow2Case(ctx, { name: 'convert raw -> qcow2', source: raw!, sourceFormat: 'raw', compress: false }, runs), true);
      rows.push(ratioRow('convert raw→qcow2, 2 GiB mixed', [c], 1));
    }
    if (want('qcow2-raw')) {
      const c = keep(convertRawCase(ctx, 'convert qcow2 -> raw', mixed2g, runs), true);
      rows.push(ratioRow('convert qcow2→raw', [c], 1));
    }
    if (want('qcow2-qcow2')) {
      const c = keep(convertQcow2Case(ctx, { name: 'convert qcow2 -> qcow2', source: qcow2!, sourceFormat: 'qcow2', compress: false }, runs), true);
      rows.push(ratioRow('convert qcow2→qcow2', [c], 1));
    }
    if (want('zlib')) {
      const c = keep(convertQcow2Case(ctx, { name: 'convert -c (zlib)', source: raw!, sourceFormat: 'raw', compress: true }, runs), true);
      rows.push(ratioRow('convert -c (zlib)', [c], 0.6));
    }
    if (want('zstd')) {
      const c = keep(convertQcow2Case(ctx, { name: 'convert -c zstd', source: raw!, sourceFormat: 'raw', compress: true, extra: ['-o', 'compression_type=zstd'] }, runs), true);
      rows.push(ratioRow('convert -c -o compression_type=zstd', [c], 1));
    }
    if (want('check')) {
      const c = keep(checkCase(ctx, ensureImage(prealloc200g, ctx.log), runs));
      rows.push(ratioRow('check, 200 GiB metadata-preallocated', [c], 1.5));
    }
    if (want('snapshot')) {
      const create = keep(writeCase(ctx, 'snapshot -c (200 GiB)', ensureImage(prealloc200g, ctx.log), ['snapshot', '-c', 'bench'], runs));
      const remove = keep(writeCase(ctx, 'snapshot -d (200 GiB, one snapshot)', ensureImage(prealloc200gSnap, ctx.log), ['snapshot', '-d', 'snap1'], runs));
      rows.push(ratioRow('snapshot -c then -d, same image', [create, remove], 1.5));
    }
    if (want('rebase')) {
      const set = ensureChain(ctx.log);
      const c = keep(
        runCase(
          ctx,
          set,
          {
            name: 'rebase -b "" (flatten)',
            qemuArgs: ['rebase', '-q', '-b', '', 'top.qcow2'],
            qcowkitArgs: ['rebase', '-q', '-b', '', 'top.qcow2'],
            copies: ['top.qcow2'],
            links: ['mid.qcow2', 'base.qcow2'],
            verify: [{ file: 'top.qcow2', shows: 'top.qcow2' }],
            written: ['top.qcow2'],
          },
          runs,
        ),
      );
      rows.push(ratioRow('rebase -b "" (flatten), 2 GiB overlay', [c], 1));
    }
    if (want('info')) {
      const small = join(ctx.workDir, 'small.qcow2');
      runTool(['qemu-img', 'create', '-q', '-f', 'qcow2', small, '1G']);
      // More runs than the bulk rows: these are tens of milliseconds.
      const infoRuns = Math.max(runs, 15);
      // `node -e 0` runs in turn with the two tools, so the floor sees the same load as qcowkit.
      ctx.log(`  info of a small image (and node -e 0): ${infoRuns} runs each, ${ctx.mode}`);
      const [qemu, qcowkit, node] = measureInterleaved(
        [
          { label: 'qemu-img', spec: { argv: ['qemu-img', 'info', small], cwd: ctx.repoRoot } },
          { label: 'qcowkit', spec: { argv: [...ctx.qcowkit, 'info', small], cwd: ctx.repoRoot } },
          { label: 'node -e 0', spec: { argv: ['node', '-e', '0'], cwd: ctx.repoRoot } },
        ],
        { runs: infoRuns, mode: ctx.mode, log: ctx.log },
      );
      const c = keep({ name: 'info of a small image', runs: infoRuns, qemu: qemu!, qcowkit: qcowkit!, ratio: qcowkit!.medianMs / qemu!.medianMs, checks: [] });
      const floor = node!.medianMs;
      const ratio = c.qcowkit.medianMs / floor;
      c.checks.push(`\`node -e 0\`, interleaved with both: median ${formatMs(floor)} (min ${formatMs(node!.minMs)}); qcowkit info / node -e 0 = ${formatRatio(ratio)} (min to min ${formatRatio(c.qcowkit.minMs / node!.minMs)})`);
      rows.push({
        work: 'info of a small image (start-up)',
        qemuMs: c.qemu.medianMs,
        qcowkitMs: c.qcowkit.medianMs,
        ratio,
        target: '≤ 1.25× `node -e 0`',
        met: ratio <= 1.25,
        note: `ratio against \`node -e 0\` (${formatMs(floor)}); qcowkit / qemu-img ${ms(c)}`,
      });
    }
    if (want('memory') && converts.length > 0) {
      const worst = converts.reduce((a, b) => (b.qcowkit.peakRssKiB > a.qcowkit.peakRssKiB ? b : a));
      const mib = worst.qcowkit.peakRssKiB / 1024;
      rows.push({
        work: 'peak memory, any convert',
        qemuMs: Number.NaN,
        qcowkitMs: Number.NaN,
        ratio: Number.NaN,
        target: '≤ 100 MiB',
        met: mib <= 100,
        note: `qcowkit ${formatBytes(worst.qcowkit.peakRssKiB * 1024)} (${worst.name}); qemu-img ${formatBytes(Math.max(...converts.map((c) => c.qemu.peakRssKiB)) * 1024)}; per convert: ${converts.map((c) => `${c.name} ${formatBytes(c.qcowkit.peakRssKiB * 1024)}`).join(', ')}`,
      });
    }

    const lines = [
      '| work | qcowkit | qemu-img | ratio | target | met | notes |',
      '| --- | --- | --- | --- | --- | --- | --- |',
      ...rows.map((r) =>
        [r.work, formatMs(r.qcowkitMs), formatMs(r.qemuMs), Number.isFinite(r.ratio) ? formatRatio(r.ratio) : '—', r.target, r.met ? '✅' : '❌', r.note].join(' | ').replace(/^/, '| ').replace(/$/, ' |'),
      ),
    ];
    return {
      name: this.name,
      title: this.title,
      measures: this.measures,
      cases,
      table: lines,
      notes: [`${runs} timed runs per tool and case (info: at least 15). Keys for \`--only\`: ${ROW_KEYS.join(', ')}.`],
    };
  },
};
