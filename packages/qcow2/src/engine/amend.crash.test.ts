import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { requireQemuImg } from '../../../../fixtures/corpus.js';
import { crashPoints, runWithCrash } from '../test-support/crash-run.js';
import { amendImage, type AmendOptions } from './amend.js';

/**
 * qemu-img amend stopped at every write (in memory: the bytes left are the prefix of the write sequence a
 * killed process leaves). Whatever the point, qemu-img check finds no corruption (leaks are allowed), the guest
 * disk and every snapshot read exactly as before, and the image is either still the old one or already has the
 * new option (the refcount width switches in one header write, a downgrade in one header write after the zero
 * clusters are expanded).
 */
requireQemuImg();

const work = mkdtempSync(join(tmpdir(), 'qcowkit-pipeline-amend-crash-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

function run(command: string, args: string[]): string {
  const r = spawnSync(command, args, { cwd: work, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${command} ${args.join(' ')}: ${r.stdout}${r.stderr}`);
  return r.stdout;
}

interface Info {
  'virtual-size': number;
  snapshots?: Array<{ name: string }>;
  'format-specific': { data: { compat: string; 'refcount-bits': number; 'lazy-refcounts'?: boolean } };
}
const info = (file: string): Info => JSON.parse(run('qemu-img', ['info', '--output=json', '-U', file])) as Info;
const identical = (a: string, b: string): boolean => spawnSync('qemu-img', ['compare', '-q', '-U', a, b], { cwd: work }).status === 0;

interface Case {
  name: string;
  /** Commands that build disk.qcow2 (and its backing file) in the work directory. */
  build: () => void;
  options: AmendOptions;
  /** The option's value, read from qemu-img info, for the old and the new side. */
  state: (i: Info) => string;
}

const cases: Case[] = [
  {
    name: 'refcount_bits=64 with 512-byte clusters (a long rebuild of the refcount structures)',
    build: () => {
      run('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=512', 'disk.qcow2', '4M']);
      run('qemu-io', ['-c', 'write -P 0x11 0 1M', '-c', 'write -P 0x22 2M 256k', 'disk.qcow2']);
      run('qemu-img', ['snapshot', '-c', 's1', 'disk.qcow2']);
      run('qemu-io', ['-c', 'write -P 0x33 512k 64k', 'disk.qcow2']);
    },
    options: { refcountBits: 64 },
    state: (i) => String(i['format-specific'].data['refcount-bits']),
  },
  {
    name: 'refcount_bits=1 (narrower)',
    build: () => {
      run('qemu-img', ['create', '-q', '-f', 'qcow2', 'disk.qcow2', '64M']);
      run('qemu-io', ['-c', 'write -P 0x11 0 1M', '-c', 'write -P 0x22 40M 256k', 'disk.qcow2']);
    },
    options: { refcountBits: 1 },
    state: (i) => String(i['format-specific'].data['refcount-bits']),
  },
  {
    name: 'compat=0.10 over a backing file, zero clusters in the active disk and in a snapshot',
    build: () => {
      run('qemu-img', ['create', '-q', '-f', 'qcow2', 'base.qcow2', '16M']);
      run('qemu-io', ['-c', 'write -P 0x99 0 16M', 'base.qcow2']);
      run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', 'disk.qcow2']);
      run('qemu-io', ['-c', 'write -z 0 256k', '-c', 'write -P 0x44 1M 64k', '-c', 'write -z 2M 64k', 'disk.qcow2']);
      run('qemu-img', ['snapshot', '-c', 's1', 'disk.qcow2']);
      run('qemu-io', ['-c', 'write -z 4M 128k', '-c', 'write -P 0x55 2M 64k', '-c', 'write -z 1M 64k', 'disk.qcow2']);
    },
    options: { compat: '0.10' },
    state: (i) => i['format-specific'].data.compat,
  },
  {
    name: 'compat=1.1,refcount_bits=8,lazy_refcounts=on on a v2 image (three switches)',
    build: () => {
      run('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', 'disk.qcow2', '16M']);
      run('qemu-io', ['-c', 'write -P 0x11 0 2M', 'disk.qcow2']);
      run('qemu-img', ['snapshot', '-c', 's1', 'disk.qcow2']);
    },
    options: { compat: '1.1', refcountBits: 8, lazyRefcounts: true },
    state: (i) => `${i['format-specific'].data.compat}/${i['format-specific'].data['refcount-bits']}/${i['format-specific'].data['lazy-refcounts'] ?? false}`,
  },
];

describe('amend stopped at any write leaves a clean image with the same guest data', { timeout: 600_000 }, () => {
  cases.forEach((c, n) => {
    it(c.name, async () => {
      for (const f of ['disk.qcow2', 'base.qcow2']) rmSync(join(work, f), { force: true });
      c.build();
      const original = new Uint8Array(readFileSync(join(work, 'disk.qcow2')));
      const others: Record<string, Uint8Array> = {};
      try {
        others['base.qcow2'] = new Uint8Array(readFileSync(join(work, 'base.qcow2')));
      } catch {
        // no backing file
      }
      const oldFile = `case${n}-old.qcow2`;
      writeFileSync(join(work, oldFile), original);
      const snapshots = (info(oldFile).snapshots ?? []).map((s) => s.name);
      for (const s of snapshots) run('qemu-img', ['convert', '-U', '-l', `snapshot.name=${s}`, '-O', 'qcow2', oldFile, `case${n}-snap-${s}.qcow2`]);
      const op = (reopen: Parameters<Parameters<typeof runWithCrash>[1]>[0]) => amendImage(reopen, c.options);
      const full = await runWithCrash(original, op, Infinity, others);
      expect(full.crashed).toBe(false);
      const newFile = `case${n}-new.qcow2`;
      writeFileSync(join(work, newFile), full.bytes);
      const oldState = c.state(info(oldFile));
      const newState = c.state(info(newFile));
      expect(newState).not.toBe(oldState);

      const seen = new Set<string>();
      for (const point of [...crashPoints(full.writes), full.writes]) {
        const crashed = await runWithCrash(original, op, point, others);
        const file = `case${n}-at${point}.qcow2`;
        writeFileSync(join(work, file), crashed.bytes);
        const check = spawnSync('qemu-img', ['check', '--output=json', '-U', file], { cwd: work, encoding: 'utf8' });
        const report = JSON.parse(check.stdout) as { corruptions?: number; 'check-errors'?: number };
        const context = `stopped before write ${point + 1} of ${full.writes}: ${check.stderr.split('\n').slice(0, 4).join(' | ')}`;
        expect(report.corruptions ?? 0, context).toBe(0);
        expect(report['check-errors'] ?? 0, context).toBe(0);
        expect(identical(file, oldFile), `${context}: the guest disk changed`).toBe(true);
        for (const s of snapshots) {
          run('qemu-img', ['convert', '-U', '-l', `snapshot.name=${s}`, '-O', 'qcow2', file, `${file}-snap.qcow2`]);
          expect(identical(`${file}-snap.qcow2`, `case${n}-snap-${s}.qcow2`), `${context}: snapshot ${s} changed`).toBe(true);
        }
        seen.add(c.state(info(file)));
      }
      expect(seen.has(oldState)).toBe(true);
      expect(seen.has(newState)).toBe(true);
    });
  });
});
