/**
 * commit-rebase: `qcowkit commit` and safe `qcowkit rebase` against qemu-img's on a 2 GiB overlay chain:
 * base.qcow2 <- mid.qcow2 <- top.qcow2 (2 GiB virtual each, 64 KiB clusters, relative backing names).
 *
 * - commit: `commit -q top.qcow2` copies what the top image holds into mid.qcow2, then empties the top image.
 * - rebase onto base: `rebase -q -b base.qcow2 -F qcow2 top.qcow2` copies into the top image what mid.qcow2
 *   holds where the top image does not (base is in the old chain: only mid's ranges are compared).
 * - rebase -b "": makes the top image standalone, copying everything base and mid show through it.
 *
 * Both tools work on their own copies, refreshed before every run (untimed; files that a case only reads are
 * hard links). Outputs are checked once after the timed runs: the two results compared with qemu-img compare,
 * each against the contents before, and qemu-img check on the images written.
 */
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, linkSync, mkdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { comparePair, type BenchContext, type BenchResult, type Benchmark, type CaseResult } from './lib/bench.js';
import { GiB, KiB, MiB, benchTempDir, qemuIo, qemuMapComposition, type BuiltImage, type ImageFacts } from './lib/images.js';
import { Prng } from './lib/prng.js';
import { formatCommand, runTool } from './lib/process.js';
import { formatBytes } from './lib/stats.js';

interface ChainParams {
  virtualSize: number;
  clusterSize: number;
  seed: number;
  /** Bytes written into each layer, in segments of minSegment..maxSegment (log-uniform), at random places. */
  layers: { name: 'base.qcow2' | 'mid.qcow2' | 'top.qcow2'; dataBytes: number; zeroBytes: number }[];
  minSegment: number;
  maxSegment: number;
}

const params: ChainParams = {
  virtualSize: 2 * GiB,
  clusterSize: 64 * KiB,
  seed: 7,
  layers: [
    { name: 'base.qcow2', dataBytes: 768 * MiB, zeroBytes: 0 },
    { name: 'mid.qcow2', dataBytes: 384 * MiB, zeroBytes: 32 * MiB },
    { name: 'top.qcow2', dataBytes: 640 * MiB, zeroBytes: 64 * MiB },
  ],
  minSegment: 64 * KiB,
  maxSegment: 8 * MiB,
};
const VERSION = 1;

export interface ChainSet {
  dir: string;
  key: string;
  reused: boolean;
  buildMs: number;
  facts: Record<string, ImageFacts>;
}

/** qemu-io commands writing `bytes` of pattern data (or zeros) in random segments, aligned to clusters. */
function segments(rng: Prng, p: ChainParams, bytes: number, zero: boolean, layer: number): string[] {
  const commands: string[] = [];
  const clusters = p.virtualSize / p.clusterSize;
  for (let done = 0; done < bytes; ) {
    const length = Math.min(bytes - done, Math.round(p.minSegment * Math.pow(p.maxSegment / p.minSegment, rng.next()) / p.clusterSize) * p.clusterSize || p.clusterSize);
    // Segments start anywhere in a cluster for the overlays (partial clusters copy-on-write), aligned in the base.
    const cluster = rng.int(0, clusters - Math.ceil(length / p.clusterSize) - 1);
    const offset = cluster * p.clusterSize + (layer > 0 && rng.next() < 0.3 ? rng.int(1, 127) * 512 : 0);
    commands.push(zero ? `write -q -z ${offset} ${length}` : `write -q -P ${(0x10 * (layer + 1) + (commands.length % 15)) & 0xff} ${offset} ${length}`);
    done += length;
  }
  return commands;
}

/** The chain, built once with qemu-img and qemu-io and cached like the other benchmark images. */
export function ensureChain(log: (line: string) => void): ChainSet {
  const key = createHash('sha256').update(JSON.stringify({ name: 'chain-2g', version: VERSION, params })).digest('hex').slice(0, 12);
  const dir = join(benchTempDir(), 'images', `chain-2g-${key}`);
  const sidecar = `${dir}.json`;
  if (existsSync(dir) && existsSync(sidecar)) {
    const saved = JSON.parse(readFileSync(sidecar, 'utf8')) as { facts: Record<string, ImageFacts>; buildMs: number };
    return { dir, key, reused: true, buildMs: saved.buildMs, facts: saved.facts };
  }
  const building = `${dir}.building-${process.pid}`;
  rmSync(building, { recursive: true, force: true });
  mkdirSync(building, { recursive: true });
  log(`  building chain-2g (${key}) ...`);
  const start = Date.now();
  const rng = new Prng(params.seed);
  const facts: Record<string, ImageFacts> = {};
  params.layers.forEach((layer, index) => {
    const backing = index === 0 ? [] : ['-b', params.layers[index - 1]!.name, '-F', 'qcow2'];
    runTool(['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', `cluster_size=${params.clusterSize}`, ...backing, layer.name, String(params.virtualSize)], { cwd: building });
    const commands = [...segments(rng, params, layer.dataBytes, false, index), ...segments(rng, params, layer.zeroBytes, true, index)];
    qemuIo(join(building, layer.name), commands);
    runTool(['qemu-img', 'check', '-q', layer.name], { cwd: building });
    facts[layer.name] = {
      description: `${formatBytes(params.virtualSize)} virtual, cluster ${formatBytes(params.clusterSize)}, ${formatBytes(layer.dataBytes)} of data and ${formatBytes(layer.zeroBytes)} of zero writes in ${commands.length} segments of ${formatBytes(params.minSegment)}..${formatBytes(params.maxSegment)}${index === 0 ? '' : ` over ${params.layers[index - 1]!.name}`}`,
      virtualSize: params.virtualSize,
      qemuMap: qemuMapComposition(join(building, layer.name)),
      details: [],
    };
  });
  renameSync(building, dir);
  const buildMs = Date.now() - start;
  writeFileSync(sidecar, `${JSON.stringify({ name: 'chain-2g', key, params, buildMs, facts }, null, 2)}\n`);
  log(`  built ${dir} in ${(buildMs / 1000).toFixed(1)} s`);
  return { dir, key, reused: false, buildMs, facts };
}

function builtImage(set: ChainSet, file: string): BuiltImage {
  const path = join(set.dir, file);
  return { name: `chain-2g/${file}`, key: set.key, path, fileSize: statSync(path).size, reused: set.reused, buildMs: set.buildMs, facts: set.facts[file]! };
}

/** Lays out a run directory: `copies` are copied (the case writes them), `links` hard-linked (only read). */
function prepare(set: ChainSet, runDir: string, copies: string[], links: string[]): void {
  rmSync(runDir, { recursive: true, force: true });
  mkdirSync(runDir, { recursive: true });
  for (const file of copies) copyFileSync(join(set.dir, file), join(runDir, file));
  for (const file of links) linkSync(join(set.dir, file), join(runDir, file));
}

function qemuStatus(args: string[], cwd: string): { status: number; out: string } {
  try {
    return { status: 0, out: runTool(['qemu-img', ...args], { cwd }) };
  } catch (error) {
    return { status: 1, out: (error as Error).message };
  }
}

export interface CaseSpec {
  name: string;
  /** Arguments after the tool name, run inside the case's directory. */
  qemuArgs: string[];
  qcowkitArgs: string[];
  copies: string[];
  links: string[];
  /** The images whose contents the two tools must leave equal, and what each must equal. */
  verify: Array<{ file: string; shows: string }>;
  written: string[];
}

export function runCase(ctx: BenchContext, set: ChainSet, spec: CaseSpec, runs: number): CaseResult {
  const slug = spec.name.replace(/[^\w.-]+/g, '_');
  const qemuDir = join(ctx.workDir, `${slug}.qemu-img`);
  const qcowkitDir = join(ctx.workDir, `${slug}.qcowkit`);
  // The image named last, by its path in the case's directory (its backing names resolve next to it).
  const abs = (dir: string, args: string[]): string[] => [...args.slice(0, -1), join(dir, args[args.length - 1]!)];
  const result = comparePair(
    ctx,
    spec.name,
    runs,
    {
      qemuArgs: abs(qemuDir, spec.qemuArgs),
      qcowkitArgs: abs(qcowkitDir, spec.qcowkitArgs),
      beforeQemu: () => prepare(set, qemuDir, spec.copies, spec.links),
      beforeQcowkit: () => prepare(set, qcowkitDir, spec.copies, spec.links),
    },
    builtImage(set, 'top.qcow2'),
  );
  let same = true;
  for (const { file, shows } of spec.verify) {
    const both = qemuStatus(['compare', join(qemuDir, file), join(qcowkitDir, file)], ctx.workDir);
    const before = qemuStatus(['compare', join(qcowkitDir, file), join(set.dir, shows)], ctx.workDir);
    same &&= both.status === 0 && before.status === 0;
    result.checks.push(
      `${file}: qemu-img compare of the two results: ${both.status === 0 ? 'identical' : `DIFFERENT (${both.out.trim()})`}; qcowkit's ${file} against ${shows} before: ${before.status === 0 ? 'identical' : `DIFFERENT (${before.out.trim()})`}`,
    );
  }
  for (const file of spec.written) {
    const check = qemuStatus(['check', '-q', file], qcowkitDir);
    same &&= check.status === 0;
    const sizes = `${formatBytes(statSync(join(qemuDir, file)).size)} / ${formatBytes(statSync(join(qcowkitDir, file)).size)}`;
    result.checks.push(`qemu-img check of qcowkit's ${file}: ${check.status === 0 ? 'clean' : `FAILED: ${check.out.trim()}`}; file size qemu-img / qcowkit ${sizes}`);
  }
  result.outputsMatch = same;
  result.checks.push(`commands run in a fresh copy each time: \`${formatCommand(['cd', qemuDir])}\`, \`${formatCommand(['cd', qcowkitDir])}\``);
  rmSync(qemuDir, { recursive: true, force: true });
  rmSync(qcowkitDir, { recursive: true, force: true });
  return result;
}

export const commitRebase: Benchmark = {
  name: 'commit-rebase',
  title: 'commit and safe rebase of a 2 GiB overlay',
  measures:
    'Wall time of a whole `commit` or safe `rebase` process (startup to exit, the final flushes included: both tools ' +
    'flush what they wrote). The chain is base.qcow2 <- mid.qcow2 <- top.qcow2, 2 GiB virtual each, 64 KiB clusters, ' +
    'written with pattern data in random segments of 64 KiB..8 MiB (a third of the overlay segments start inside a ' +
    'cluster) plus zero writes. commit copies what top.qcow2 holds into mid.qcow2 and empties top.qcow2; rebase onto ' +
    'base compares old and new chains only where mid.qcow2 holds data the top does not; rebase -b "" copies everything ' +
    'the backing chain shows. Each run starts from fresh copies (untimed).',
  defaultRuns: 3,
  run(ctx: BenchContext): BenchResult {
    const runs = ctx.runs ?? this.defaultRuns;
    const set = ensureChain(ctx.log);
    const cases: CaseSpec[] = [
      {
        name: 'commit top into mid',
        qemuArgs: ['commit', '-q', 'top.qcow2'],
        qcowkitArgs: ['commit', '-q', 'top.qcow2'],
        copies: ['top.qcow2', 'mid.qcow2'],
        links: ['base.qcow2'],
        verify: [
          { file: 'mid.qcow2', shows: 'top.qcow2' },
          { file: 'top.qcow2', shows: 'top.qcow2' },
        ],
        written: ['top.qcow2', 'mid.qcow2'],
      },
      {
        name: 'rebase top onto base',
        qemuArgs: ['rebase', '-q', '-b', 'base.qcow2', '-F', 'qcow2', 'top.qcow2'],
        qcowkitArgs: ['rebase', '-q', '-b', 'base.qcow2', '-F', 'qcow2', 'top.qcow2'],
        copies: ['top.qcow2'],
        links: ['mid.qcow2', 'base.qcow2'],
        verify: [{ file: 'top.qcow2', shows: 'top.qcow2' }],
        written: ['top.qcow2'],
      },
      {
        name: 'rebase top -b "" (standalone)',
        qemuArgs: ['rebase', '-q', '-b', '', 'top.qcow2'],
        qcowkitArgs: ['rebase', '-q', '-b', '', 'top.qcow2'],
        copies: ['top.qcow2'],
        links: ['mid.qcow2', 'base.qcow2'],
        verify: [{ file: 'top.qcow2', shows: 'top.qcow2' }],
        written: ['top.qcow2'],
      },
    ];
    return {
      name: this.name,
      title: this.title,
      measures: this.measures,
      cases: cases.map((spec) => runCase(ctx, set, spec, runs)),
      notes: [
        'qemu-img 7.2 rebase compares old and new contents in 2 MiB steps and writes only the differing 512-byte sectors ' +
          '(each partial cluster then copy-on-writes); qcowkit compares cluster by cluster and writes whole clusters of the ' +
          'current contents. Both skip ranges the overlay holds itself; both flush before the reference changes.',
        'qemu-img commit runs a mirror block job into mid.qcow2, then empties top.qcow2 by rebuilding it (make_completely_empty); ' +
          'qcowkit clears the L1 table and drops the refcounts, then cuts the file to the same size.',
      ],
    };
  },
};
