/**
 * vm-snapshot: `qcowkit vm snapshot` of a running libvirt guest whose 2 GiB disk (a qcow2 overlay on a qcow2
 * base, 1 GiB written: 512 MiB in each) is written into a standalone qcow2, by the three flows — live `overlay`,
 * live `mirror` (nova's), `cold` (managedsave + convert + start) — each against `qemu-img convert` of the same
 * disk in the same run. Besides the time of the whole process, the peak extra host space is sampled every 20 ms
 * by a separate process: all the files in the work directory and libvirt's managed save directory, less what
 * was there before the run, with and without the output itself.
 *
 * Needs libvirtd with the QEMU driver (scripts/start-libvirt.sh) and root; without them the benchmark reports
 * that it was skipped.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { closeSync, copyFileSync, existsSync, ftruncateSync, openSync, readFileSync, rmSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import type { BenchContext, BenchResult, Benchmark, CaseResult } from './lib/bench.js';
import { ensureImage, GiB, MiB, qemuMapComposition, type ImageFacts, type ImageMaker } from './lib/images.js';
import { randomBytesAt } from './lib/prng.js';
import { formatCommand, runMeasured, runTool, syncDisks, type Measurement, type ProcessSample } from './lib/process.js';
import { formatBytes, formatMs, max, median, min } from './lib/stats.js';

const URI = 'qemu:///system';
const DOMAIN = 'qcowkit-bench-vm';
const SAVE_DIR = '/var/lib/libvirt/qemu/save';

interface LayerParams {
  virtualSize: number;
  seed: number;
  /** Random data in `length` pieces every `stride` bytes, starting at `first`. */
  first: number;
  length: number;
  stride: number;
  /** For the top layer: the cached base image it is built over (its path is part of the cache key). */
  base?: string;
}

function buildLayer(path: string, p: LayerParams, log: (line: string) => void): ImageFacts {
  const raw = `${path}.raw`;
  const fd = openSync(raw, 'w');
  let written = 0;
  try {
    ftruncateSync(fd, p.virtualSize);
    const chunk = new Uint8Array(p.length);
    for (let at = p.first; at + p.length <= p.virtualSize; at += p.stride) {
      randomBytesAt(String(p.seed), at, chunk);
      writeSync(fd, chunk, 0, chunk.length, at);
      written += chunk.length;
    }
  } finally {
    closeSync(fd);
  }
  log(`    qemu-img convert raw -> qcow2 (${formatBytes(written)} of data) ...`);
  try {
    runTool(['qemu-img', 'convert', '-q', '-f', 'raw', '-O', 'qcow2', raw, path]);
  } finally {
    rmSync(raw, { force: true });
  }
  if (p.base !== undefined) runTool(['qemu-img', 'rebase', '-q', '-u', '-f', 'qcow2', '-b', p.base, '-F', 'qcow2', path]);
  return {
    description: `${formatBytes(p.virtualSize)} virtual, ${formatBytes(written)} of incompressible data in ${formatBytes(p.length)} pieces every ${formatBytes(p.stride)}${p.base === undefined ? '' : `, over ${p.base}`}`,
    virtualSize: p.virtualSize,
    qemuMap: qemuMapComposition(path),
    details: [],
  };
}

const layer = (name: string, params: LayerParams): ImageMaker<LayerParams> => ({ name, version: 1, params, build: buildLayer });

const BASE = layer('vm-base-2g', { virtualSize: 2 * GiB, seed: 11, first: 0, length: 2 * MiB, stride: 8 * MiB });
const topOver = (base: string): ImageMaker<LayerParams> => layer('vm-top-2g', { virtualSize: 2 * GiB, seed: 12, first: 4 * MiB, length: 2 * MiB, stride: 8 * MiB, base });

function virsh(...args: string[]): string {
  return runTool(['virsh', '-c', URI, ...args]);
}

function virshQuiet(...args: string[]): void {
  spawnSync('virsh', ['-c', URI, ...args], { stdio: 'ignore' });
}

function libvirtUnavailable(): string | undefined {
  const r = spawnSync('virsh', ['-c', URI, 'version'], { encoding: 'utf8' });
  if (r.error) return `virsh: ${r.error.message}`;
  if (r.status !== 0) return r.stderr.trim();
  return undefined;
}

function domainXml(top: string): string {
  const kvm = spawnSync('virsh', ['-c', URI, 'domcapabilities', '--virttype', 'kvm'], { stdio: 'ignore' }).status === 0;
  return `<domain type='${kvm ? 'kvm' : 'qemu'}'>
  <name>${DOMAIN}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='${top}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <memballoon model='none'/>
  </devices>
</domain>
`;
}

// ---------------------------------------------------------------------------------------------------------
// Peak extra space, sampled by a separate process (the measured command runs with spawnSync, which blocks us).

const SAMPLER = `
const fs = require('fs'), path = require('path');
const [out, ready, excludedJson, ...dirs] = process.argv.slice(1);
const excluded = new Set(JSON.parse(excludedJson));
function sample() {
  let total = 0, temporary = 0;
  for (const dir of dirs) {
    let names = [];
    try { names = fs.readdirSync(dir); } catch { continue; }
    for (const name of names) {
      const file = path.join(dir, name);
      let st;
      try { st = fs.statSync(file); } catch { continue; }
      if (!st.isFile()) continue;
      total += st.blocks * 512;
      if (!excluded.has(file)) temporary += st.blocks * 512;
    }
  }
  return { total, temporary };
}
const start = sample();
let peak = { ...start };
fs.writeFileSync(ready, '');
const timer = setInterval(() => {
  const s = sample();
  peak.total = Math.max(peak.total, s.total);
  peak.temporary = Math.max(peak.temporary, s.temporary);
}, 20);
process.on('SIGTERM', () => {
  clearInterval(timer);
  const end = sample();
  peak.total = Math.max(peak.total, end.total);
  peak.temporary = Math.max(peak.temporary, end.temporary);
  fs.writeFileSync(out, JSON.stringify({ start, peak }));
  process.exit(0);
});
`;

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

function waitForFile(path: string, what: string): void {
  for (let i = 0; i < 500; i++) {
    if (existsSync(path)) return;
    sleepSync(10);
  }
  throw new Error(`${what} did not start`);
}

interface SpaceSample {
  /** Peak of (all files) - (all files at the start): the output included. */
  extraTotal: number;
  /** Peak of the files that are neither the disk's images nor the output: delta, overlay, managed save image. */
  temporary: number;
}

class SpaceSampler {
  private child: ChildProcess;
  private readonly out: string;

  constructor(workDir: string, excluded: string[], dirs: string[]) {
    this.out = join(workDir, `space-${Date.now()}.json`);
    const ready = `${this.out}.ready`;
    this.child = spawn(process.execPath, ['-e', SAMPLER, this.out, ready, JSON.stringify(excluded), ...dirs], { stdio: 'ignore' });
    waitForFile(ready, 'the space sampler');
    rmSync(ready);
  }

  stop(): SpaceSample {
    this.child.kill('SIGTERM');
    waitForFile(this.out, 'the space sampler result');
    sleepSync(20);
    const { start, peak } = JSON.parse(readFileSync(this.out, 'utf8')) as { start: { total: number; temporary: number }; peak: { total: number; temporary: number } };
    rmSync(this.out);
    return { extraTotal: peak.total - start.total, temporary: peak.temporary - start.temporary };
  }
}

// ---------------------------------------------------------------------------------------------------------

interface Contender {
  label: string;
  argv: string[];
  output: string;
}

interface Measured {
  samples: ProcessSample[];
  space: SpaceSample[];
}

function measurementOf(label: string, argv: string[], samples: ProcessSample[]): Measurement {
  const walls = samples.map((s) => s.wallMs);
  return {
    label,
    argv,
    samples,
    medianMs: median(walls),
    minMs: min(walls),
    medianCpuMs: median(samples.map((s) => (s.userMs ?? Number.NaN) + (s.sysMs ?? Number.NaN))),
    peakRssKiB: max(samples.map((s) => s.maxRssKiB ?? Number.NaN)),
  };
}

export const vmSnapshot: Benchmark = {
  name: 'vm-snapshot',
  title: 'vm snapshot of a running libvirt guest (overlay, mirror, cold) vs qemu-img convert',
  measures:
    'Wall time of a whole `qcowkit vm snapshot` process (spawn to exit: libvirt steps, conversion, cleanup) of a running, idle ' +
    'guest (64 MiB of RAM, no OS) whose 2 GiB disk is a qcow2 overlay over a qcow2 base with 1 GiB of incompressible data ' +
    '(512 MiB in each image), into a standalone qcow2; against `qemu-img convert -U -t writeback -O qcow2` of the same ' +
    'chain (both end with the output flushed). Also the peak extra host space during the run, sampled every 20 ms: ' +
    '"temporary" counts the delta (mirror), the overlay (overlay) or the managed save image (cold); "with output" adds the output.',
  defaultRuns: 3,
  run(ctx: BenchContext): BenchResult {
    const result: BenchResult = { name: this.name, title: this.title, measures: this.measures, cases: [], notes: [] };
    const unavailable = libvirtUnavailable();
    if (unavailable !== undefined) {
      ctx.log(`  skipped: libvirt is not available at ${URI} (${unavailable}); run scripts/start-libvirt.sh as root`);
      result.notes.push(`Skipped: libvirt is not available at ${URI} (${unavailable}). Run \`scripts/start-libvirt.sh\` as root first.`);
      return result;
    }
    const runs = ctx.runs ?? this.defaultRuns;
    const base = ensureImage(BASE, ctx.log);
    const top = ensureImage(topOver(base.path), ctx.log);
    // A private copy of the chain: the snapshots put their temporary files beside the output, in the work dir.
    const dir = ctx.workDir;
    const basePath = join(dir, 'base.qcow2');
    const topPath = join(dir, 'top.qcow2');
    ctx.log('  copying the disk chain into the work directory ...');
    copyFileSync(base.path, basePath);
    copyFileSync(top.path, topPath);
    runTool(['qemu-img', 'rebase', '-q', '-u', '-f', 'qcow2', '-b', basePath, '-F', 'qcow2', topPath]);
    const reference = join(dir, 'reference.qcow2');

    virshQuiet('destroy', DOMAIN);
    virshQuiet('undefine', DOMAIN, '--managed-save');
    const xml = join(dir, 'domain.xml');
    writeFileSync(xml, domainXml(topPath));
    virsh('define', `--file=${xml}`);
    rmSync(xml);
    try {
      virsh('start', DOMAIN);
      runTool(['qemu-img', 'convert', '-U', '-O', 'qcow2', topPath, reference]);
      const qemuOut = join(dir, 'qemu-img.qcow2');
      const qemu: Contender = { label: 'qemu-img', argv: ['qemu-img', 'convert', '-U', '-t', 'writeback', '-O', 'qcow2', topPath, qemuOut], output: qemuOut };
      const flows: Array<{ name: string; flags: string[] }> = [
        { name: 'overlay (live)', flags: ['--mode', 'live', '--method', 'overlay'] },
        { name: 'mirror (live, nova)', flags: ['--mode', 'live', '--method', 'mirror'] },
        { name: 'cold (managedsave)', flags: ['--mode', 'cold'] },
      ];
      const spaceRows: string[] = [];
      for (const flow of flows) {
        const output = join(dir, `${flow.name.split(' ')[0]}.qcow2`);
        const ours: Contender = { label: 'qcowkit', argv: [...ctx.qcowkit, 'vm', 'snapshot', '--connect', URI, ...flow.flags, DOMAIN, output], output };
        ctx.log(`  ${flow.name}: ${runs} runs each, ${ctx.mode}`);
        const measured = new Map<Contender, Measured>();
        const runOne = (c: Contender, timed: boolean, round: number): void => {
          rmSync(c.output, { force: true });
          syncDisks();
          if (ctx.mode === 'cold') writeFileSync('/proc/sys/vm/drop_caches', '3\n');
          const sampler = new SpaceSampler(dir, [basePath, topPath, reference, qemuOut, output], [dir, SAVE_DIR]);
          let sample: ProcessSample;
          let space: SpaceSample;
          try {
            sample = runMeasured({ argv: c.argv, cwd: ctx.repoRoot });
          } finally {
            space = sampler.stop();
          }
          ctx.log(`    ${timed ? `run ${round + 1}/${runs}` : 'warm-up'} ${c.label}: ${sample.wallMs.toFixed(0)} ms, peak extra space ${formatBytes(space.extraTotal)} (temporary ${formatBytes(space.temporary)})`);
          if (!timed) return;
          const m = measured.get(c) ?? { samples: [], space: [] };
          m.samples.push(sample);
          m.space.push(space);
          measured.set(c, m);
        };
        if (ctx.mode === 'warm') {
          runOne(qemu, false, -1);
          runOne(ours, false, -1);
        }
        for (let round = 0; round < runs; round++) {
          const order = round % 2 === 0 ? [qemu, ours] : [ours, qemu];
          for (const c of order) runOne(c, true, round);
        }
        const q = measured.get(qemu)!;
        const k = measured.get(ours)!;
        const qm = measurementOf(qemu.label, qemu.argv, q.samples);
        const km = measurementOf(ours.label, ours.argv, k.samples);
        const c: CaseResult = { name: flow.name, runs, qemu: qm, qcowkit: km, ratio: km.medianMs / qm.medianMs, checks: [] };
        const same = spawnSync('qemu-img', ['compare', '-q', reference, output]).status === 0;
        c.outputsMatch = same && spawnSync('qemu-img', ['compare', '-q', reference, qemuOut]).status === 0;
        c.checks.push(same ? 'output identical to the disk (`qemu-img compare` with a copy made before the runs)' : 'OUTPUT DIFFERS from the disk');
        const state = virsh('domstate', DOMAIN).trim();
        c.checks.push(`guest afterwards: ${state}; output ${formatBytes(statSync(output).size)}`);
        const peak = (list: SpaceSample[], key: keyof SpaceSample): string => formatBytes(Math.max(...list.map((s) => s[key])));
        c.checks.push(`peak extra host space: qcowkit ${peak(k.space, 'temporary')} temporary, ${peak(k.space, 'extraTotal')} with the output; qemu-img ${peak(q.space, 'extraTotal')} (its output)`);
        spaceRows.push(`| ${flow.name} | ${formatMs(km.medianMs)} | ${peak(k.space, 'temporary')} | ${peak(k.space, 'extraTotal')} | ${formatMs(qm.medianMs)} | ${peak(q.space, 'extraTotal')} |`);
        result.cases.push(c);
        rmSync(output, { force: true });
        rmSync(qemuOut, { force: true });
      }
      result.notes.push(
        // The report quotes each note ("> "): every line of the table continues the quote.
        ['| flow | qcowkit median | peak temporary space | peak extra space with output | qemu-img convert median | qemu-img peak extra space |', '| --- | --- | --- | --- | --- | --- |', ...spaceRows].join('\n> '),
        'The guest is idle: with a guest that writes during the snapshot, the overlay grows by what it writes and is merged back; the mirror ' +
          'delta copies the whole top image first. Cold stops the guest for the whole conversion (its time here is the guest\'s downtime); the ' +
          'live flows never stop it. qemu-img convert -U reads a disk in use without any consistency: it is the speed reference, not a snapshot method.',
        `Commands (from the repository root): \`${formatCommand([...ctx.qcowkit, 'vm', 'snapshot', '--connect', URI, '--mode', 'live', '--method', 'overlay', DOMAIN, 'OUT.qcow2'])}\`.`,
      );
    } finally {
      virshQuiet('destroy', DOMAIN);
      virshQuiet('undefine', DOMAIN, '--managed-save');
    }
    return result;
  },
};
