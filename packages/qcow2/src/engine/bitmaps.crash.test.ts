import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { requireQemuImg } from '../../../../fixtures/corpus.js';
import type { Qcow2Device } from '../device/qcow2-device.js';
import { crashPoints, runWithCrash } from '../test-support/crash-run.js';
import { BitmapEditor, bitmapSource } from './bitmaps.js';

/**
 * Bitmap changes and guest writes over tracked bitmaps, stopped at every write (in memory: the bytes left are
 * what a killed process leaves). Whatever the point: qemu-img check finds no corruption, qemu-img info opens the
 * image and lists the bitmaps of the old state or of the new one, and — what an incremental backup relies on —
 * a guest write that reached the disk is in every enabled bitmap, or that bitmap is flagged in use.
 */
requireQemuImg();

const work = mkdtempSync(join(tmpdir(), 'qcowkit-pipeline-bitmap-crash-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

function run(command: string, args: string[]): string {
  const r = spawnSync(command, args, { cwd: work, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${command} ${args.join(' ')}: ${r.stdout}${r.stderr}`);
  return r.stdout;
}

interface Listed {
  name: string;
  flags: string[];
  granularity: number;
}
function bitmaps(file: string): Listed[] {
  const info = JSON.parse(run('qemu-img', ['info', '--output=json', '-U', file])) as { 'format-specific': { data: { bitmaps?: Listed[] } } };
  return info['format-specific'].data.bitmaps ?? [];
}

/** The set ranges of bitmap `name` (the engine's reader: bitmap.test.ts checks it bit for bit against qemu's files). */
async function bitsOf(bytes: Uint8Array, name: string): Promise<Array<[number, number]>> {
  let ranges: Array<[number, number]> = [];
  await runWithCrash(bytes, async (reopen) => {
    const device = await reopen();
    const editor = await BitmapEditor.open(device.image, device.attachedWriter!.refcounts);
    const entry = editor.bitmaps.find((e) => e.name === name)!;
    ranges = await bitmapSource(device.image, entry).dirtyRanges(0, device.image.virtualSize);
  }, Infinity);
  return ranges;
}

let original: Uint8Array;
beforeAll(() => {
  run('qemu-img', ['create', '-q', '-f', 'qcow2', 'disk.qcow2', '32M']);
  run('qemu-img', ['bitmap', '--add', 'disk.qcow2', 'a']);
  run('qemu-img', ['bitmap', '--add', '-g', '512', 'disk.qcow2', 'b']);
  run('qemu-img', ['bitmap', '--add', '--disable', 'disk.qcow2', 'off']);
  run('qemu-io', ['-c', 'write -P 1 1M 64k', '-c', 'write -P 2 20M 4k', 'disk.qcow2']);
  original = new Uint8Array(readFileSync(join(work, 'disk.qcow2')));
});

type Op = (reopen: () => Promise<Qcow2Device>) => Promise<void>;
async function withEditor(reopen: () => Promise<Qcow2Device>, body: (editor: BitmapEditor) => Promise<void>): Promise<void> {
  const device = await reopen();
  try {
    await body(await BitmapEditor.open(device.image, device.attachedWriter!.refcounts));
  } finally {
    await device.close();
  }
}

/** Each change, and the bitmap whose bits tell the sides apart when the list itself stays the same. */
const changes: Array<{ name: string; op: Op; bits?: string; throughWriter?: boolean }> = [
  { name: 'add', op: (reopen) => withEditor(reopen, (e) => e.add('new', 4096)) },
  { name: 'remove', op: (reopen) => withEditor(reopen, (e) => e.remove('b')) },
  { name: 'clear', op: (reopen) => withEditor(reopen, (e) => e.clear('b')), bits: 'b' },
  { name: 'merge', op: (reopen) => withEditor(reopen, (e) => e.merge('off', e.sourceFor('b'))), bits: 'off' },
  { name: 'disable', op: (reopen) => withEditor(reopen, (e) => e.setEnabled('a', false)) },
  // A resize changes the size field and every bitmap's table in one header write: qemu opens every prefix.
  // (Through the writer: the enabled bitmaps are flagged in use in between, as while any write.)
  { name: 'resize (grow)', op: (reopen) => resizeTo(reopen, 3 * 1024 ** 3), throughWriter: true },
  { name: 'resize (shrink)', op: (reopen) => resizeTo(reopen, 8 * 1024 * 1024), throughWriter: true },
];

async function resizeTo(reopen: () => Promise<Qcow2Device>, size: number): Promise<void> {
  const device = await reopen();
  try {
    await device.resize(size);
  } finally {
    await device.close();
  }
}

/** What tells the old image from the new one: the bitmap list, the disk size, and the bits of one bitmap. */
async function side(file: string, bytes: Uint8Array, bitsName: string | undefined, ignoreInUse = false): Promise<string> {
  const size = (JSON.parse(run('qemu-img', ['info', '--output=json', '-U', file])) as { 'virtual-size': number })['virtual-size'];
  const listed = bitmaps(file).map((b) => (ignoreInUse ? { ...b, flags: b.flags.filter((f) => f !== 'in-use') } : b));
  return JSON.stringify([listed, size, bitsName === undefined ? [] : await bitsOf(bytes, bitsName)]);
}

describe('bitmap changes stopped at any write leave the old bitmaps or the new ones', { timeout: 600_000 }, () => {
  for (const change of changes) {
    it(change.name, async () => {
      const full = await runWithCrash(original, change.op, Infinity);
      expect(full.crashed).toBe(false);
      writeFileSync(join(work, `${change.name}-new.qcow2`), full.bytes);
      writeFileSync(join(work, 'old.qcow2'), original);
      const ignoreInUse = change.throughWriter === true;
      const sides = [await side('old.qcow2', original, change.bits, ignoreInUse), await side(`${change.name}-new.qcow2`, full.bytes, change.bits, ignoreInUse)];
      expect(sides[0]).not.toBe(sides[1]);
      const seen = new Set<number>();
      for (const point of [...crashPoints(full.writes), full.writes]) {
        const crashed = await runWithCrash(original, change.op, point);
        const file = `${change.name}-at${point}.qcow2`;
        writeFileSync(join(work, file), crashed.bytes);
        const check = spawnSync('qemu-img', ['check', '--output=json', '-U', file], { cwd: work, encoding: 'utf8' });
        const report = JSON.parse(check.stdout) as { corruptions?: number; 'check-errors'?: number };
        const context = `${change.name} stopped before write ${point + 1} of ${full.writes}: ${check.stderr.split('\n').slice(0, 3).join(' | ')}`;
        expect(report.corruptions ?? 0, context).toBe(0);
        expect(report['check-errors'] ?? 0, context).toBe(0);
        const found = sides.indexOf(await side(file, crashed.bytes, change.bits, ignoreInUse));
        expect(found, `${context}: bitmaps ${JSON.stringify(bitmaps(file))}`).toBeGreaterThanOrEqual(0);
        seen.add(found);
      }
      expect([...seen].sort()).toEqual([0, 1]);
    });
  }
});

describe('a guest write over tracked bitmaps, stopped at any write: written data is in every enabled bitmap, or the bitmap is flagged in use', { timeout: 600_000 }, () => {
  it('write, zero write and discard through one device', async () => {
    const op: Op = async (reopen) => {
      const device = await reopen();
      try {
        await device.write(new Uint8Array(65536).fill(9), 5 * 1024 * 1024);
        await device.writeZeroes(1024 * 1024, 65536);
        await device.discard(20 * 1024 * 1024, 65536);
      } finally {
        await device.close();
      }
    };
    const full = await runWithCrash(original, op, Infinity);
    expect(full.crashed).toBe(false);
    writeFileSync(join(work, 'w-new.qcow2'), full.bytes);
    writeFileSync(join(work, 'old.qcow2'), original);
    expect(bitmaps('w-new.qcow2').every((b) => !b.flags.includes('in-use'))).toBe(true);
    const written = await bitsOf(full.bytes, 'a');
    expect(written).toContainEqual([5 * 1024 * 1024, 5 * 1024 * 1024 + 65536]);
    let sawInUse = false;
    for (const point of [...crashPoints(full.writes, 40), full.writes]) {
      const crashed = await runWithCrash(original, op, point);
      const file = `w-at${point}.qcow2`;
      writeFileSync(join(work, file), crashed.bytes);
      const check = spawnSync('qemu-img', ['check', '--output=json', '-U', file], { cwd: work, encoding: 'utf8' });
      const report = JSON.parse(check.stdout) as { corruptions?: number; 'check-errors'?: number };
      const context = `stopped before write ${point + 1} of ${full.writes}`;
      expect(report.corruptions ?? 0, context).toBe(0);
      expect(report['check-errors'] ?? 0, context).toBe(0);
      const changed = spawnSync('qemu-img', ['compare', '-q', '-U', file, 'old.qcow2'], { cwd: work }).status !== 0;
      for (const listed of bitmaps(file)) {
        if (listed.name === 'off') continue;
        if (listed.flags.includes('in-use')) {
          sawInUse = true;
          continue;
        }
        if (changed) {
          const bits = await bitsOf(crashed.bytes, listed.name);
          const covers = (at: number) => bits.some(([from, to]) => from <= at && at < to);
          expect(covers(5 * 1024 * 1024) || covers(1024 * 1024) || covers(20 * 1024 * 1024), `${context}: data changed but bitmap ${listed.name} is consistent without the write`).toBe(true);
        }
      }
    }
    expect(sawInUse).toBe(true);
  });
});
