import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { requireQemuImg } from '../../../../fixtures/corpus.js';
import { Qcow2Device } from '../device/qcow2-device.js';
import { openImage } from '../device/open-image.js';
import { MemoryStorage } from '../io/memory-storage.js';
import { CrashStorage, Crashed } from '../test-support/crash-storage.js';

/**
 * Snapshot create, delete and apply stopped at every write (in-memory: the bytes left are exactly the prefix of
 * the write sequence a killed process leaves). Each is a metadata switch, so whatever the stopping point the
 * file must be the old image or the new one: qemu-img check finds no corruption AND no leak, the snapshot list
 * is the old or the new one, the active disk (qemu-img compare) and every snapshot's contents match that side.
 */
requireQemuImg();

const work = mkdtempSync(join(tmpdir(), 'qcowkit-snapshot-crash-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

function run(command: string, args: string[]): string {
  const r = spawnSync(command, args, { cwd: work, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${command} ${args.join(' ')}: ${r.stdout}${r.stderr}`);
  return r.stdout;
}

function snapshotNames(file: string): string[] {
  const info = JSON.parse(run('qemu-img', ['info', '--output=json', '-U', file])) as { snapshots?: Array<{ name: string }> };
  return (info.snapshots ?? []).map((s) => s.name);
}

function identical(a: string, b: string): boolean {
  return spawnSync('qemu-img', ['compare', '-q', '-U', a, b], { cwd: work }).status === 0;
}

/** The snapshot's contents as a standalone qcow2 file (for qemu-img compare). */
function snapshotContents(file: string, name: string, out: string): string {
  run('qemu-img', ['convert', '-U', '-O', 'qcow2', '-l', `snapshot.name=${name}`, file, out]);
  return out;
}

type Op = (device: Qcow2Device) => Promise<unknown>;

async function runOp(bytes: Uint8Array, op: Op, survivingWrites: number): Promise<{ bytes: Uint8Array; writes: number; crashed: boolean }> {
  const memory = new MemoryStorage(bytes.slice(), { name: 'disk.qcow2' });
  const storage = new CrashStorage(memory, survivingWrites);
  const device = await openImage('disk.qcow2', { hostFiles: { open: async () => storage }, writable: true, cache: 'unsafe' });
  if (!(device instanceof Qcow2Device)) throw new Error('not qcow2');
  let crashed = false;
  try {
    await op(device);
    await device.close();
  } catch (error) {
    if (!(error instanceof Crashed)) throw error;
    crashed = true;
  }
  return { bytes: memory.contents().slice(), writes: storage.writes, crashed };
}

/** Crash points to try: all of them when few, else an even spread plus the last few (around the switch). */
function crashPoints(writes: number): number[] {
  if (writes <= 24) return Array.from({ length: writes }, (_, i) => i);
  const points = new Set<number>();
  for (let i = 0; i < 16; i++) points.add(Math.floor((i * writes) / 16));
  for (let i = Math.max(0, writes - 6); i < writes; i++) points.add(i);
  return [...points].sort((a, b) => a - b);
}

interface Variant {
  name: string;
  create: string[];
  size: string;
  /** qemu-io commands that put data in the image before qemu takes snapshot q1. */
  before: string[];
  /** qemu-io commands after q1 (so the active disk differs from it). */
  after: string[];
}

const variants: Variant[] = [
  { name: '64 KiB clusters, two L2 tables, compressed clusters', create: [], size: '1G', before: ['write -P 0x11 0 256k', 'write -c -P 0x22 1M 64k', 'write -P 0x33 600M 128k'], after: ['write -P 0x44 64k 64k', 'write -P 0x55 700M 64k'] },
  { name: '512-byte clusters, 64-bit refcounts (new refcount blocks)', create: ['-o', 'cluster_size=512,refcount_bits=64'], size: '2M', before: ['write -P 0x11 0 300k'], after: ['write -P 0x44 100k 200k', 'write -P 0x55 1M 100k'] },
  { name: 'extended L2, 16 KiB clusters', create: ['-o', 'extended_l2=on,cluster_size=16k'], size: '64M', before: ['write -P 0x11 0 100k', 'write -P 0x66 40M 3k'], after: ['write -P 0x44 2k 2k', 'write -P 0x55 10M 40k'] },
  { name: 'v2 (compat 0.10)', create: ['-o', 'compat=0.10'], size: '16M', before: ['write -P 0x11 0 1M'], after: ['write -P 0x44 512k 1M'] },
];

const operations: Array<{ name: string; op: Op }> = [
  { name: 'create', op: (d) => d.createSnapshot({ name: 'new' }) },
  { name: 'delete a qemu-made snapshot', op: (d) => d.deleteSnapshot('q1') },
  { name: 'delete a qcowkit-made snapshot', op: (d) => d.deleteSnapshot('k1') },
  { name: 'apply a qemu-made snapshot', op: (d) => d.applySnapshot('q1') },
  { name: 'apply a qcowkit-made snapshot', op: (d) => d.applySnapshot('k1') },
];

describe('snapshot create, delete and apply stopped at any write leave the old image or the new one, clean', { timeout: 600_000 }, () => {
  variants.forEach((variant, v) => {
    describe(variant.name, () => {
      const base = `v${v}.qcow2`;
      let original: Uint8Array;
      it.each(operations.map((o, i) => ({ ...o, i })))('$name', async ({ op, i }) => {
        if (original === undefined) {
          run('qemu-img', ['create', '-q', '-f', 'qcow2', ...variant.create, base, variant.size]);
          run('qemu-io', ['-f', 'qcow2', ...variant.before.flatMap((c) => ['-c', c]), base]);
          run('qemu-img', ['snapshot', '-c', 'q1', base]);
          run('qemu-io', ['-f', 'qcow2', ...variant.after.flatMap((c) => ['-c', c]), base]);
          // A snapshot of our own making too, then one more change on the active disk.
          const made = await runOp(new Uint8Array(readFileSync(join(work, base))), (d) => d.createSnapshot({ name: 'k1' }), Infinity);
          writeFileSync(join(work, base), made.bytes);
          run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x77 0 4k', base]);
          original = new Uint8Array(readFileSync(join(work, base)));
        }
        const prefix = `v${v}-op${i}`;
        const oldFile = `${prefix}-old.qcow2`;
        const newFile = `${prefix}-new.qcow2`;
        writeFileSync(join(work, oldFile), original);
        const full = await runOp(original, op, Infinity);
        expect(full.crashed).toBe(false);
        writeFileSync(join(work, newFile), full.bytes);
        const oldNames = snapshotNames(oldFile);
        const newNames = snapshotNames(newFile);
        // What each snapshot holds, from the side where it exists (a created snapshot holds the old active disk).
        const expectedContents = new Map<string, string>();
        for (const name of oldNames) expectedContents.set(name, snapshotContents(oldFile, name, `${prefix}-${name}.qcow2`));
        for (const name of newNames) if (!expectedContents.has(name)) expectedContents.set(name, oldFile);

        // Every crash point, and the end (no crash: the new image must pass the same checks).
        const points = [...crashPoints(full.writes), full.writes];
        expect(points.length).toBeGreaterThan(2);
        let sawOld = false;
        let sawNew = false;
        for (const point of points) {
          const crashed = await runOp(original, op, point);
          expect(crashed.crashed, `stopped before write ${point + 1} of ${full.writes}`).toBe(point < full.writes);
          const file = `${prefix}-at${point}.qcow2`;
          writeFileSync(join(work, file), crashed.bytes);
          const check = spawnSync('qemu-img', ['check', '--output=json', file], { cwd: work, encoding: 'utf8' });
          const report = JSON.parse(check.stdout) as { corruptions?: number; leaks?: number; 'check-errors'?: number };
          const context = `stopped before write ${point + 1} of ${full.writes}: ${check.stderr.split('\n').slice(0, 5).join(' | ')}`;
          expect(report.corruptions ?? 0, context).toBe(0);
          expect(report['check-errors'] ?? 0, context).toBe(0);
          expect(report.leaks ?? 0, context).toBe(0);
          const names = snapshotNames(file);
          const isNew = JSON.stringify(names) === JSON.stringify(newNames) && JSON.stringify(names) !== JSON.stringify(oldNames) ? true : JSON.stringify(names) === JSON.stringify(oldNames) ? false : undefined;
          expect(isNew, `${context}: snapshots ${names.join(',')}`).toBeDefined();
          // Apply keeps the list: the active disk tells the sides apart.
          const side = isNew === true ? newFile : identical(file, oldFile) ? oldFile : newFile;
          expect(identical(file, side), `${context}: active disk matches neither side`).toBe(true);
          if (side === oldFile) sawOld = true;
          else sawNew = true;
          for (const name of names) {
            const contents = snapshotContents(file, name, `${prefix}-at${point}-${name}.qcow2`);
            expect(identical(contents, expectedContents.get(name)!), `${context}: snapshot ${name}`).toBe(true);
          }
        }
        // Both sides were seen (the test would prove nothing otherwise).
        expect(sawOld).toBe(true);
        expect(sawNew).toBe(true);
      });
    });
  });
});
