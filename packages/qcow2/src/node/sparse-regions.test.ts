import { execFileSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readSync, rmSync, statSync, truncateSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { StorageRegion } from '../io/storage.js';
import { FileStorage } from './file-storage.js';
import { fileDataRegions, sparseSupport } from './sparse-regions.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const BLOCK = 4 * KiB; // ext4/xfs/btrfs/tmpfs allocation granularity on the machines we run on

let dir: string;

function sparseFile(name: string, size: number, writes: Array<[offset: number, bytes: number]>): string {
  const path = join(dir, name);
  const fd = openSync(path, 'w');
  try {
    truncateSync(path, size);
    for (const [offset, bytes] of writes) writeSync(fd, Buffer.alloc(bytes, 0xa5), 0, bytes, offset);
  } finally {
    closeSync(fd);
  }
  return path;
}

function regionsOf(path: string, offset: number, length: number, maxRegions?: number): StorageRegion[] | undefined {
  const fd = openSync(path, 'r');
  try {
    return fileDataRegions(fd, offset, length, statSync(path).size, maxRegions);
  } finally {
    closeSync(fd);
  }
}

/** Regions are in order, contiguous, cover [offset, offset+length) exactly and never repeat a kind. */
function expectExactCover(regions: StorageRegion[], offset: number, length: number): void {
  if (length === 0) {
    expect(regions).toEqual([]);
    return;
  }
  expect(regions.length).toBeGreaterThan(0);
  expect(regions[0]!.offset).toBe(offset);
  let at = offset;
  regions.forEach((r, i) => {
    expect(r.offset).toBe(at);
    expect(r.length).toBeGreaterThan(0);
    if (i > 0) expect(r.hole).not.toBe(regions[i - 1]!.hole);
    at += r.length;
  });
  expect(at).toBe(offset + length);
}

/** Every hole reads as zeros (past EOF, nothing to read). */
function expectHolesAreZero(path: string, regions: StorageRegion[]): void {
  const fd = openSync(path, 'r');
  try {
    for (const r of regions.filter((x) => x.hole)) {
      const buf = Buffer.alloc(Math.min(r.length, 4 * MiB));
      const n = readSync(fd, buf, 0, buf.length, r.offset);
      expect(buf.subarray(0, n).every((b) => b === 0)).toBe(true);
    }
  } finally {
    closeSync(fd);
  }
}

const qemuImg = (() => {
  try {
    execFileSync('qemu-img', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();

/**
 * qemu-img's own view of a raw file (lseek SEEK_DATA/SEEK_HOLE as well) as regions, clipped to the file size
 * (qemu rounds a raw image up to whole 512-byte sectors).
 */
function qemuRegions(path: string): StorageRegion[] {
  const size = statSync(path).size;
  const out = execFileSync('qemu-img', ['map', '--output=json', '-f', 'raw', path], { encoding: 'utf8' });
  const merged: StorageRegion[] = [];
  for (const e of JSON.parse(out) as Array<{ start: number; length: number; data: boolean }>) {
    const length = Math.min(e.start + e.length, size) - e.start;
    if (length <= 0) continue;
    const last = merged[merged.length - 1];
    if (last && last.hole === !e.data) last.length += length;
    else merged.push({ offset: e.start, length, hole: !e.data });
  }
  return merged;
}

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'qcowkit-sparse-'));
});

afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

it('is built natively in CI', () => {
  if (process.env.CI) expect(sparseSupport()).toBe('native');
  else expect(['native', 'none']).toContain(sparseSupport());
});

describe.runIf(sparseSupport() === 'native')('fileDataRegions (native SEEK_DATA/SEEK_HOLE)', () => {
  // Does the file system of tmpdir() keep holes and report them? (ext4, xfs, btrfs, tmpfs do.)
  let fsHoles = false;
  beforeAll(() => {
    const probe = sparseFile('probe.raw', 1 * MiB, [[512 * KiB, 1]]);
    const regions = regionsOf(probe, 0, 1 * MiB)!;
    fsHoles = regions.some((r) => r.hole) && statSync(probe).blksize === BLOCK;
    if (!fsHoles) console.warn(`${tmpdir()} does not report holes at 4 KiB granularity: exact-region checks skipped`);
  });

  it('finds holes and data at file-system block granularity, and a hole past EOF', (ctx) => {
    if (!fsHoles) ctx.skip();
    const size = 1 * MiB;
    // 1 byte at 64 KiB, 1 byte just before the end, and 10 KiB straddling blocks at 300 KiB + 100.
    const path = sparseFile('known.raw', size, [
      [64 * KiB, 1],
      [size - 576, 1],
      [300 * KiB + 100, 10 * KiB],
    ]);
    const regions = regionsOf(path, 0, 2 * MiB)!;
    expect(regions).toEqual([
      { offset: 0, length: 64 * KiB, hole: true },
      { offset: 64 * KiB, length: BLOCK, hole: false },
      { offset: 64 * KiB + BLOCK, length: 300 * KiB - 68 * KiB, hole: true },
      { offset: 300 * KiB, length: 3 * BLOCK, hole: false }, // [300 KiB + 100, 310 KiB + 100) touches 3 blocks
      { offset: 312 * KiB, length: size - BLOCK - 312 * KiB, hole: true },
      { offset: size - BLOCK, length: BLOCK, hole: false },
      { offset: size, length: 1 * MiB, hole: true }, // past EOF
    ]);
    expectExactCover(regions, 0, 2 * MiB);
    expectHolesAreZero(path, regions);
    if (qemuImg) expect(qemuRegions(path)).toEqual(regions.filter((r) => r.offset < size));

    // Windows into the same file are clipped to the range, not to block boundaries.
    expect(regionsOf(path, 1000, 10)).toEqual([{ offset: 1000, length: 10, hole: true }]);
    expect(regionsOf(path, 64 * KiB + 7, 100)).toEqual([{ offset: 64 * KiB + 7, length: 100, hole: false }]);
    expect(regionsOf(path, 60 * KiB, 16 * KiB)).toEqual([
      { offset: 60 * KiB, length: 4 * KiB, hole: true },
      { offset: 64 * KiB, length: BLOCK, hole: false },
      { offset: 68 * KiB, length: 8 * KiB, hole: true },
    ]);
    expect(regionsOf(path, size - 10, 20)).toEqual([
      { offset: size - 10, length: 10, hole: false },
      { offset: size, length: 10, hole: true },
    ]);
    expect(regionsOf(path, 5 * MiB, 3 * MiB)).toEqual([{ offset: 5 * MiB, length: 3 * MiB, hole: true }]);
    expect(regionsOf(path, 123, 0)).toEqual([]);
  });

  it('covers any window exactly (randomised windows over a fragmented file)', () => {
    const size = 4 * MiB + 1234; // size not block-aligned
    const writes: Array<[number, number]> = [];
    let seed = 12345;
    const rand = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    for (let i = 0; i < 60; i++) writes.push([rand(size - 20 * KiB), 1 + rand(20 * KiB)]);
    const path = sparseFile('fragmented.raw', size, writes);
    const whole = regionsOf(path, 0, size)!;
    expectExactCover(whole, 0, size);
    expectHolesAreZero(path, whole);
    // Every written byte lies in a data region.
    for (const [offset, bytes] of writes) {
      const r = whole.find((x) => x.offset <= offset && offset < x.offset + x.length)!;
      expect(r.hole).toBe(false);
      const rEnd = whole.find((x) => x.offset <= offset + bytes - 1 && offset + bytes - 1 < x.offset + x.length)!;
      expect(rEnd.hole).toBe(false);
    }
    if (qemuImg && fsHoles) expect(qemuRegions(path)).toEqual(whole);
    for (let i = 0; i < 200; i++) {
      const offset = rand(size + 64 * KiB);
      const length = rand(2 * MiB);
      const regions = regionsOf(path, offset, length)!;
      expectExactCover(regions, offset, length);
      // A window agrees with the whole-file answer, clipped.
      for (const r of regions) {
        if (r.offset >= size) {
          expect(r.hole).toBe(true);
          continue;
        }
        const w = whole.find((x) => x.offset <= r.offset && r.offset < x.offset + x.length)!;
        const wEnd = w.offset + w.length;
        expect(r.hole).toBe(w.hole);
        // Clipped to the window; a hole that ends the file runs on into the hole past EOF.
        if (w.hole && wEnd === size) expect(r.offset + r.length).toBe(offset + length);
        else expect(r.offset + r.length).toBe(Math.min(wEnd, offset + length));
      }
    }
  });

  it('bounds the number of regions, reporting the unwalked rest as data', (ctx) => {
    if (!fsHoles) ctx.skip();
    const size = 1 * MiB;
    const writes: Array<[number, number]> = [];
    for (let off = 0; off < size; off += 2 * BLOCK) writes.push([off, 1]); // 128 data blocks, 128 holes
    const path = sparseFile('many.raw', size, writes);
    expect(regionsOf(path, 0, size)!.length).toBe(256);
    for (const cap of [2, 3, 4, 5, 10, 101]) {
      const regions = regionsOf(path, 0, size + MiB, cap)!;
      expect(regions.length).toBeLessThanOrEqual(cap);
      expectExactCover(regions, 0, size + MiB);
      expect(regions[regions.length - 1]).toEqual({ offset: size, length: MiB, hole: true });
      expect(regions[regions.length - 2]!.hole).toBe(false); // the unwalked rest
      expectHolesAreZero(path, regions);
    }
  });

  it('reports a fully written file as one data region', () => {
    const path = join(dir, 'dense.raw');
    const fd = openSync(path, 'w');
    writeSync(fd, Buffer.alloc(256 * KiB, 1));
    closeSync(fd);
    expect(regionsOf(path, 0, 256 * KiB)).toEqual([{ offset: 0, length: 256 * KiB, hole: false }]);
    expect(regionsOf(path, 0, 0)).toEqual([]);
    expect(regionsOf(path, 0, 300 * KiB)).toEqual([
      { offset: 0, length: 256 * KiB, hole: false },
      { offset: 256 * KiB, length: 44 * KiB, hole: true },
    ]);
  });

  it('sees what qemu-img create -f raw allocates (only the first 4 KiB)', (ctx) => {
    if (!qemuImg || !fsHoles) ctx.skip();
    const path = join(dir, 'qemu.raw');
    execFileSync('qemu-img', ['create', '-q', '-f', 'raw', path, '64M']);
    const regions = regionsOf(path, 0, 64 * MiB)!;
    expect(regions).toEqual(qemuRegions(path));
    expect(regions[regions.length - 1]!.hole).toBe(true);
    expect(regions.filter((r) => !r.hole).reduce((n, r) => n + r.length, 0)).toBeLessThanOrEqual(BLOCK);
    expectExactCover(regions, 0, 64 * MiB);
  });

  it('is what FileStorage.dataRegions answers', async (ctx) => {
    if (!fsHoles) ctx.skip();
    const path = sparseFile('storage.raw', 8 * MiB, [[3 * MiB, 5]]);
    const storage = await FileStorage.open(path);
    try {
      expect(await storage.dataRegions(0, 9 * MiB)).toEqual([
        { offset: 0, length: 3 * MiB, hole: true },
        { offset: 3 * MiB, length: BLOCK, hole: false },
        { offset: 3 * MiB + BLOCK, length: 6 * MiB - BLOCK, hole: true },
      ]);
      expect(await storage.dataRegions(0, 0)).toEqual([]);
    } finally {
      await storage.close();
    }
  });
});

it('falls back to one data region without the addon', async () => {
  vi.resetModules();
  process.env.QCOWKIT_NATIVE = 'off';
  try {
    const fresh = await import('./file-storage.js');
    const sparse = await import('./sparse-regions.js');
    expect(sparse.sparseSupport()).toBe('none');
    const path = sparseFile('fallback.raw', 1 * MiB, [[4 * KiB, 1]]);
    const fd = openSync(path, 'r');
    expect(sparse.fileDataRegions(fd, 0, MiB, MiB)).toBeUndefined();
    closeSync(fd);
    const storage = await fresh.FileStorage.open(path);
    try {
      expect(await storage.dataRegions(0, 2 * MiB)).toEqual([{ offset: 0, length: 2 * MiB, hole: false }]);
    } finally {
      await storage.close();
    }
  } finally {
    delete process.env.QCOWKIT_NATIVE;
    vi.resetModules();
  }
});
