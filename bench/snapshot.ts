/**
 * snapshot: internal snapshot operations on a 20 GiB qcow2 image with every cluster allocated (issue 4):
 * `snapshot -c` (every data cluster and L2 table gets its refcount raised and its L2 entry's COPIED flag
 * cleared), `snapshot -d` on an image holding one snapshot (the reverse), and `check` when qcowkit has it
 * (every L1/L2 entry and refcount read and cross-checked). qemu-img does each in tens of milliseconds, so the
 * table also carries `--version` of both tools: the startup floor, which qcowkit pays on every command.
 *
 * The image comes from `qemu-img create -o preallocation=metadata`: every L2 entry points to a host cluster
 * but the data areas stay holes, so the file is 20 GiB long with a few MiB on disk. The write cases start each
 * run from a fresh `cp --sparse=always` copy (untimed).
 */
import { spawnSync } from 'node:child_process';
import { rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { comparePair, type BenchContext, type BenchResult, type Benchmark, type CaseResult } from './lib/bench.js';
import { ensureImage, GiB, KiB, qemuMapComposition, type BuiltImage, type ImageFacts, type ImageMaker } from './lib/images.js';
import { formatCommand, runMeasured, runTool } from './lib/process.js';
import { formatBytes, formatMs, formatRatio, median, min } from './lib/stats.js';

interface PreallocatedParams {
  virtualSize: number;
  clusterSize: number;
  /** Internal snapshots taken (with qemu-img) after creating the image. */
  snapshots: string[];
}

export function preallocatedImage(name: string, params: PreallocatedParams): ImageMaker<PreallocatedParams> {
  return { name, version: 1, params, build: buildPreallocated };
}

function buildPreallocated(path: string, p: PreallocatedParams): ImageFacts {
  runTool(['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', `cluster_size=${p.clusterSize},compat=1.1,preallocation=metadata`, path, String(p.virtualSize)]);
  for (const tag of p.snapshots) runTool(['qemu-img', 'snapshot', '-c', tag, path]);
  const clusters = p.virtualSize / p.clusterSize;
  const l2Tables = Math.ceil(clusters / (p.clusterSize / 8));
  return {
    description: `${formatBytes(p.virtualSize)} virtual, \`preallocation=metadata\`: all ${clusters} guest clusters allocated (${l2Tables} L2 tables), data areas left as holes; cluster ${formatBytes(p.clusterSize)}`,
    virtualSize: p.virtualSize,
    qemuMap: qemuMapComposition(path),
    details: [p.snapshots.length === 0 ? 'no snapshots' : `internal snapshots (made with qemu-img): ${p.snapshots.join(', ')}`],
  };
}

const base = { virtualSize: 20 * GiB, clusterSize: 64 * KiB };
export const prealloc20g = preallocatedImage('prealloc-20g', { ...base, snapshots: [] });
export const prealloc20gSnap = preallocatedImage('prealloc-20g-snap', { ...base, snapshots: ['snap1'] });

/** A fresh, still sparse copy of the image (untimed, before every run of a write case). */
function freshCopy(from: string, to: string): void {
  rmSync(to, { force: true });
  runTool(['cp', '--sparse=always', from, to]);
}

// ---------------------------------------------------------------------------------------------------------
// Checks on the two tools' results.

interface CheckJson {
  'check-errors'?: number;
  corruptions?: number;
  leaks?: number;
  'allocated-clusters'?: number;
  'image-end-offset'?: number;
}

function qemuCheck(path: string): { clean: boolean; text: string } {
  const r = spawnSync('qemu-img', ['check', '--output=json', '-f', 'qcow2', path], { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
  try {
    const json = JSON.parse(r.stdout) as CheckJson;
    if (r.status === 0) return { clean: true, text: `clean, ${json['allocated-clusters']} allocated clusters, image end ${json['image-end-offset']}` };
  } catch {
    // fall through
  }
  return { clean: false, text: `**FAILED** (exit ${r.status}): ${(r.stdout + r.stderr).trim().split('\n').slice(0, 4).join(' / ')}` };
}

interface InfoSnapshot {
  id: string;
  name: string;
  'vm-state-size': number;
  'vm-clock-sec': number;
  'vm-clock-nsec': number;
  icount?: number;
}

/** The snapshot table without the creation dates (which differ between the runs). */
function snapshotTable(path: string): string {
  const info = JSON.parse(runTool(['qemu-img', 'info', '--output=json', '-f', 'qcow2', path])) as { snapshots?: InfoSnapshot[] };
  const list = (info.snapshots ?? []).map((s) => `${s.id}:${s.name} vm-state ${s['vm-state-size']} clock ${s['vm-clock-sec']}.${s['vm-clock-nsec']}${s.icount === undefined ? '' : ` icount ${s.icount}`}`);
  return list.length === 0 ? 'no snapshots' : list.join('; ');
}

/** After the timed runs, the two resulting images: both consistent, the same snapshot table, sizes. */
function checkResults(result: CaseResult, qemuOut: string, qcowkitOut: string): void {
  const q = qemuCheck(qemuOut);
  const k = qemuCheck(qcowkitOut);
  const qs = snapshotTable(qemuOut);
  const ks = snapshotTable(qcowkitOut);
  result.outputsMatch = q.clean && k.clean && qs === ks;
  result.checks.push(`qemu-img check of qemu-img's result: ${q.text}`);
  result.checks.push(`qemu-img check of qcowkit's result: ${k.text}`);
  result.checks.push(qs === ks ? `same snapshot table (dates aside): ${qs}` : `SNAPSHOT TABLES DIFFER: qemu-img ${qs}; qcowkit ${ks}`);
  const qst = statSync(qemuOut);
  const kst = statSync(qcowkitOut);
  result.checks.push(`file size qemu-img ${formatBytes(qst.size)} (${qst.size} B), qcowkit ${formatBytes(kst.size)} (${kst.size} B); on disk ${formatBytes(qst.blocks * 512)} / ${formatBytes(kst.blocks * 512)}`);
}

// ---------------------------------------------------------------------------------------------------------
// Cases.

/** A write case: each run works on its own fresh copy of `image`. */
export function writeCase(ctx: BenchContext, name: string, image: BuiltImage, args: string[], runs: number): CaseResult {
  const file = name.replace(/[^\w.-]+/g, '_');
  const qemuOut = join(ctx.workDir, `${file}.qemu-img.qcow2`);
  const qcowkitOut = join(ctx.workDir, `${file}.qcowkit.qcow2`);
  const result = comparePair(
    ctx,
    name,
    runs,
    {
      qemuArgs: [...args, qemuOut],
      qcowkitArgs: [...args, qcowkitOut],
      beforeQemu: () => freshCopy(image.path, qemuOut),
      beforeQcowkit: () => freshCopy(image.path, qcowkitOut),
    },
    image,
  );
  try {
    checkResults(result, qemuOut, qcowkitOut);
  } finally {
    rmSync(qemuOut, { force: true });
    rmSync(qcowkitOut, { force: true });
  }
  return result;
}

/** Read-only `check`: both tools on the cached image itself; their stdout is compared. */
export function checkCase(ctx: BenchContext, image: BuiltImage, runs: number): CaseResult {
  const qemuOut = join(ctx.workDir, 'check.qemu-img.txt');
  const qcowkitOut = join(ctx.workDir, 'check.qcowkit.txt');
  const result = comparePair(
    ctx,
    'check',
    runs,
    { qemuArgs: ['check', image.path], qcowkitArgs: ['check', image.path], qemuStdout: qemuOut, qcowkitStdout: qcowkitOut },
    image,
  );
  const a = spawnSync('cat', [qemuOut], { encoding: 'utf8' }).stdout.trim();
  const b = spawnSync('cat', [qcowkitOut], { encoding: 'utf8' }).stdout.trim();
  result.outputsMatch = a === b;
  result.checks.push(a === b ? `outputs identical: \`${a.replace(/\n/g, ' / ')}\`` : `OUTPUTS DIFFER: qemu-img \`${a.replace(/\n/g, ' / ')}\`; qcowkit \`${b.replace(/\n/g, ' / ')}\``);
  return result;
}

function startupCase(ctx: BenchContext, runs: number): CaseResult {
  const result = comparePair(ctx, 'startup (--version)', runs, { qemuArgs: ['--version'], qcowkitArgs: ['--version'] });
  result.checks.push('no image: the fixed cost of starting each program (node + module loading for qcowkit); every other case includes it');
  const node = Array.from({ length: runs }, () => runMeasured({ argv: ['node', '-e', '0'], cwd: ctx.repoRoot }).wallMs);
  result.checks.push(`for reference, \`node -e 0\` here: median ${formatMs(median(node))} (min ${formatMs(min(node))}) over ${runs} runs`);
  return result;
}

/** Whether the compiled qcowkit has a `check` command (commander prints the top-level help for unknown commands). */
function qcowkitHasCheck(ctx: BenchContext): { has: boolean; why: string } {
  const argv = [...ctx.qcowkit, 'check', '--help'];
  const r = spawnSync(argv[0]!, argv.slice(1), { cwd: ctx.repoRoot, encoding: 'utf8' });
  const has = r.status === 0 && /^Usage: qcowkit check\b/m.test(r.stdout);
  return { has, why: `\`${formatCommand(argv)}\` ${has ? 'prints the check usage' : `does not print a check usage (exit ${r.status}, first line: ${(r.stdout + r.stderr).split('\n')[0]})`}` };
}

export const snapshot: Benchmark = {
  name: 'snapshot',
  title: 'snapshot -c / snapshot -d / check on a fully allocated 20 GiB image',
  measures:
    'Wall time of a whole process, from spawn to exit, startup included. The image is 20 GiB with every cluster allocated ' +
    '(`qemu-img create -o preallocation=metadata`: 327680 data clusters, 40 L2 tables, the data areas left as holes). ' +
    '`snapshot -c` raises the refcount of every cluster and clears COPIED in every L2 entry; `snapshot -d` (on the same image ' +
    'holding one snapshot) does the reverse and frees the snapshot\'s L1 table; `check` reads all metadata and rebuilds the ' +
    'refcounts in memory. The write cases start every run from a fresh `cp --sparse=always` copy (untimed). qemu-img takes ' +
    'tens of milliseconds here, so the `--version` row gives each tool\'s startup floor, and each case also lists its times net of it.',
  defaultRuns: 10,
  run(ctx: BenchContext): BenchResult {
    const runs = ctx.runs ?? this.defaultRuns;
    const plain = ensureImage(prealloc20g, ctx.log);
    const withSnap = ensureImage(prealloc20gSnap, ctx.log);
    const hasCheck = qcowkitHasCheck(ctx);
    const startup = startupCase(ctx, runs);
    const cases = [
      startup,
      writeCase(ctx, 'snapshot -c', plain, ['snapshot', '-c', 'bench'], runs),
      writeCase(ctx, 'snapshot -d (one snapshot)', withSnap, ['snapshot', '-d', 'snap1'], runs),
      ...(hasCheck.has ? [checkCase(ctx, withSnap, runs)] : []),
    ];
    for (const c of cases.slice(1)) {
      const q = c.qemu.medianMs - startup.qemu.medianMs;
      const k = c.qcowkit.medianMs - startup.qcowkit.medianMs;
      // CPU time suffers less than wall time from other load on the machine (GNU time: 10 ms resolution).
      const qc = c.qemu.medianCpuMs - startup.qemu.medianCpuMs;
      const kc = c.qcowkit.medianCpuMs - startup.qcowkit.medianCpuMs;
      c.checks.push(
        `net of startup (case median − \`--version\` median): wall qemu-img ${formatMs(q)}, qcowkit ${formatMs(k)}, ratio ${formatRatio(k / q)}; ` +
          `CPU user+sys qemu-img ${formatMs(qc)}, qcowkit ${formatMs(kc)}`,
      );
    }
    return {
      name: this.name,
      title: this.title,
      measures: this.measures,
      cases,
      notes: [
        '"outputs: same" for the write cases means: both resulting images pass `qemu-img check` and have the same snapshot table ' +
          '(id, name, VM state size, VM clock; the creation dates differ). For `check` it means the same stdout.',
        hasCheck.has
          ? `\`check\` is timed on the image holding one snapshot (all refcounts 2), read-only, no copy; ${hasCheck.why}.`
          : `No \`check\` case: qcowkit has no check command in this build (${hasCheck.why}).`,
      ],
    };
  },
};
