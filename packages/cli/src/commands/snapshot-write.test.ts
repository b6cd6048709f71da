import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { copyImage, corpusDir, findImage, qemuImg, qemuIo, requireQemuImg } from '../../../../fixtures/corpus.js';

/**
 * Snapshots written by qcowkit, read by qemu (and the other way round): every image kind of the corpus gets a
 * snapshot from us; qemu-img lists it, check is clean, qemu applies it back to exactly what the disk was; and
 * snapshots qemu made apply and delete correctly here.
 */
const cli = resolve(__dirname, '../../dist/main.js');
function qcowkit(args: string[], cwd: string): { status: number; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [cli, ...args], { cwd, encoding: 'utf8' });
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

requireQemuImg();
const work = mkdtempSync(join(tmpdir(), 'qcowkit-snap-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

function checkClean(file: string): void {
  const r = qemuImg(['check', file]);
  expect(r.stdout + r.stderr).toContain('No errors were found on the image.');
  expect(r.status).toBe(0);
}

function rawOf(file: string, dir: string, snapshot?: string): Buffer {
  const out = join(dir, `raw-${Math.random().toString(36).slice(2)}.raw`);
  const args = ['convert', ...(snapshot === undefined ? [] : ['-l', `snapshot.name=${snapshot}`]), '-O', 'raw', file, out];
  expect(qemuImg(args).status).toBe(0);
  return readFileSync(out);
}

// The smallest of these disks is 128 KiB: every write below stays inside it.
const kinds = ['c64k.qcow2', 'v2.qcow2', 'extl2.qcow2', 'extl2-backing.qcow2', 'zlib.qcow2', 'zstd.qcow2', 'c512.qcow2', 'refcount64.qcow2', 'snapshots.qcow2', 'chain/top.qcow2'];

describe('snapshots written by qcowkit, read by qemu', () => {
  for (const kind of kinds) {
    it(kind, () => {
      const dir = mkdtempSync(join(work, 'k-'));
      const file = copyImage(corpusDir(), findImage(corpusDir(), kind), dir);
      const before = rawOf(file, dir);
      expect(qcowkit(['snapshot', '-c', 'ours', file], dir).status).toBe(0);
      checkClean(file);
      expect(qemuImg(['snapshot', '-l', file]).stdout).toMatch(/\bours\b/);
      // Change the disk with qemu, then let qemu revert to our snapshot: the disk is as it was.
      expect(qemuIo(['-c', 'write -P 0x77 0 48k', '-c', 'write -z 64k 64k', file]).status).toBe(0);
      expect(rawOf(file, dir, 'ours').equals(before)).toBe(true);
      expect(qemuImg(['snapshot', '-a', 'ours', file]).status).toBe(0);
      expect(rawOf(file, dir).equals(before)).toBe(true);
      checkClean(file);
      // And the other way: qemu changes the disk, we apply, qemu reads.
      expect(qemuIo(['-c', 'write -P 0x66 32k 64k', file]).status).toBe(0);
      expect(qcowkit(['snapshot', '-a', 'ours', file], dir).status).toBe(0);
      expect(rawOf(file, dir).equals(before)).toBe(true);
      checkClean(file);
      expect(qcowkit(['snapshot', '-d', 'ours', file], dir).status).toBe(0);
      checkClean(file);
      expect(qemuImg(['snapshot', '-l', file]).stdout).not.toMatch(/\bours\b/);
    });
  }
});

describe('enabled persistent bitmaps', () => {
  it('block applying a snapshot, as qemu refuses it, and leave the file unchanged', () => {
    const dir = mkdtempSync(join(work, 'b-'));
    const file = copyImage(corpusDir(), findImage(corpusDir(), 'bitmaps.qcow2'), dir);
    expect(qcowkit(['snapshot', '-c', 'ours', file], dir).status).toBe(0);
    checkClean(file);
    expect(qemuImg(['snapshot', '-a', 'ours', file]).stderr).toContain('Device has active dirty bitmaps');
    const before = readFileSync(file);
    const r = qcowkit(['snapshot', '-a', 'ours', file], dir);
    expect(r.status).toBe(1);
    expect(r.stderr).toContain('Device has active dirty bitmaps');
    expect(readFileSync(file).equals(before)).toBe(true);
  });
});

describe('snapshots made by qemu, used by qcowkit', () => {
  it('applies and deletes qemu-made snapshots (by name and by id)', () => {
    const dir = mkdtempSync(join(work, 'q-'));
    const file = copyImage(corpusDir(), findImage(corpusDir(), 'snapshots.qcow2'), dir);
    const list = qemuImg(['snapshot', '-l', file]).stdout;
    const names = [...list.matchAll(/^(\d+)\s+(\S+)/gm)].map((m) => ({ id: m[1]!, name: m[2]! }));
    expect(names.length).toBeGreaterThan(1);
    for (const { name } of names) {
      const expected = rawOf(file, dir, name);
      expect(qcowkit(['snapshot', '-a', name, file], dir).status).toBe(0);
      expect(rawOf(file, dir).equals(expected)).toBe(true);
      checkClean(file);
    }
    expect(qcowkit(['snapshot', '-d', names[0]!.id, file], dir).status).toBe(0);
    checkClean(file);
    expect(qemuImg(['snapshot', '-l', file]).stdout).not.toMatch(new RegExp(`^${names[0]!.id}\\s`, 'm'));
  });
});

describe('snapshots that cannot be represented are refused before anything is written', () => {
  for (const [name, create] of [
    ['1-bit refcounts with data', ['-o', 'refcount_bits=1']],
    ['an external data file', ['-o', 'data_file=disk.data']],
  ] as const) {
    it(name, () => {
      const dir = mkdtempSync(join(work, 'r-'));
      const file = join(dir, 'disk.qcow2');
      expect(qemuImg(['create', '-q', '-f', 'qcow2', ...create, file, '8M'], { cwd: dir }).status).toBe(0);
      expect(qemuIo(['-c', 'write -P 1 0 1M', file], { cwd: dir }).status).toBe(0);
      const before = readFileSync(file);
      const r = qcowkit(['snapshot', '-c', 'x', file], dir);
      expect(r.status).toBe(1);
      expect(r.stderr).toContain("Could not create snapshot 'x'");
      expect(readFileSync(file).equals(before)).toBe(true);
    });
  }
});
