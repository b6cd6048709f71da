import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyImage, corpusDir, findImage, hasQemuImg, qemuImg, qemuIo, requireQemuImg } from '../../../../fixtures/corpus.js';
import { CLI_MAIN, qcowkit } from '../test-support/run-cli.js';

requireQemuImg();


function img(args: string[], cwd: string): string {
  const r = qemuImg(args, { cwd });
  expect(r.status, `qemu-img ${args.join(' ')}: ${r.stderr}`).toBe(0);
  return r.stdout;
}

function checkClean(file: string, cwd: string): void {
  const r = qemuImg(['check', file], { cwd });
  expect(r.status, `qemu-img check ${file}: ${r.stdout}${r.stderr}`).toBe(0);
}

function compare(a: string, b: string, cwd: string, formats: string[] = []): void {
  const r = qemuImg(['compare', ...formats, a, b], { cwd });
  expect(r.status, `qemu-img compare ${a} ${b}: ${r.stdout}${r.stderr}`).toBe(0);
}

interface Mapped {
  start: number;
  length: number;
  depth: number;
  present: boolean;
  zero: boolean;
  data: boolean;
}

/**
 * qemu-img map's extents without host offsets, which depend on allocation order: qemu-img merges neighbours only
 * when their host offsets are contiguous too, so neighbours with equal flags are merged again here.
 */
function map(file: string, cwd: string): Mapped[] {
  const merged: Mapped[] = [];
  for (const { offset: _offset, ...extent } of JSON.parse(img(['map', '--output=json', file], cwd)) as Array<Mapped & { offset?: number }>) {
    const last = merged[merged.length - 1];
    const same = last !== undefined && last.start + last.length === extent.start && last.depth === extent.depth && last.present === extent.present && last.zero === extent.zero && last.data === extent.data;
    if (same) last.length += extent.length;
    else merged.push(extent);
  }
  return merged;
}

/** Copies of the corpus three-level chain (raw base, qcow2 mid, qcow2 top, relative names) in `dir/chain`. */
function chainCopy(dir: string): void {
  copyImage(corpusDir(), findImage(corpusDir(), 'chain/top.qcow2'), dir);
}

describe.runIf(hasQemuImg())('qcowkit commit against qemu-img commit', { timeout: 120_000 }, () => {
  const work = mkdtempSync(join(tmpdir(), 'qcowkit-commit-cli-'));
  afterAll(() => rmSync(work, { recursive: true, force: true }));
  beforeAll(() => {
    expect(existsSync(CLI_MAIN), `${CLI_MAIN} is missing: build first (npx tsc -b packages/qcow2 packages/cli)`).toBe(true);
  });

  /** A fresh pair of copies: ours/chain and theirs/chain, plus raw views of every layer as they were before. */
  function setup(name: string): { ours: string; theirs: string } {
    const ours = join(work, name, 'ours');
    const theirs = join(work, name, 'theirs');
    chainCopy(ours);
    chainCopy(theirs);
    for (const layer of ['top.qcow2', 'mid.qcow2']) img(['convert', '-O', 'raw', `chain/${layer}`, `${layer}.before.raw`], ours);
    return { ours, theirs };
  }

  it('commit: the same guest contents as qemu-img commit in every layer, both images clean, the overlay emptied', () => {
    const { ours, theirs } = setup('plain');
    const r = qcowkit(['commit', 'chain/top.qcow2'], ours);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toBe('Image committed.\n');
    img(['commit', '-q', 'chain/top.qcow2'], theirs);
    for (const layer of ['top.qcow2', 'mid.qcow2']) {
      compare(join(ours, 'chain', layer), join(theirs, 'chain', layer), work);
      checkClean(`chain/${layer}`, ours);
    }
    compare(join(ours, 'chain/base.raw'), join(theirs, 'chain/base.raw'), work, ['-f', 'raw', '-F', 'raw']);
    // The mid image now shows what the top showed, and the top reads through to it.
    compare('chain/mid.qcow2', 'top.qcow2.before.raw', ours);
    compare('chain/top.qcow2', 'top.qcow2.before.raw', ours);
    // Emptied as qemu empties it: nothing allocated in the top image, its file cut back to qemu's size.
    expect(map('chain/top.qcow2', ours).every((e) => e.depth > 0)).toBe(true);
    expect(statSync(join(ours, 'chain/top.qcow2')).size).toBe(statSync(join(theirs, 'chain/top.qcow2')).size);
    // The mid image holds the same extents as qemu's (data, zero flags) — not only the same bytes.
    expect(map('chain/mid.qcow2', ours)).toEqual(map('chain/mid.qcow2', theirs));
  });

  it('the emptied overlay reads through to new data written into its backing file', () => {
    const { ours } = setup('read-through');
    expect(qcowkit(['commit', '-q', 'chain/top.qcow2'], ours).status).toBe(0);
    const w = qemuIo(['-f', 'qcow2', '-c', 'write -P 0x77 0 64k', 'chain/mid.qcow2'], { cwd: ours });
    expect(w.status, w.stderr).toBe(0);
    const r = qemuIo(['-f', 'qcow2', '-c', 'read -P 0x77 0 64k', 'chain/top.qcow2'], { cwd: ours });
    expect(r.stdout).not.toContain('Pattern verification failed');
    expect(r.status).toBe(0);
  });

  it('commit -b base: through every layer into the raw base, -b implies -d, as qemu-img', () => {
    const { ours, theirs } = setup('deep');
    const r = qcowkit(['commit', '-p', '-b', 'base.raw', 'chain/top.qcow2'], ours);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/\(100\.00\/100%\)\r\nImage committed\.\n$/);
    img(['commit', '-q', '-b', 'base.raw', 'chain/top.qcow2'], theirs);
    compare(join(ours, 'chain/base.raw'), join(theirs, 'chain/base.raw'), work, ['-f', 'raw', '-F', 'raw']);
    compare(join(ours, 'chain/base.raw'), join(ours, 'top.qcow2.before.raw'), work, ['-f', 'raw', '-F', 'raw']);
    for (const layer of ['top.qcow2', 'mid.qcow2']) {
      compare(join(ours, 'chain', layer), join(theirs, 'chain', layer), work);
      checkClean(`chain/${layer}`, ours);
    }
    // The top image keeps its data (-d) and still shows the same disk; the mid image's file is untouched (what it
    // shows has changed with the base under it: qemu-img calls the images in between invalid after commit -b).
    compare('chain/top.qcow2', 'top.qcow2.before.raw', ours);
    expect(readFileSync(join(ours, 'chain/mid.qcow2')).equals(readFileSync(join(corpusDir(), 'chain/mid.qcow2')))).toBe(true);
    expect(map('chain/top.qcow2', ours)).toEqual(map('chain/top.qcow2', theirs));
  });

  it('commit -d keeps the overlay; errors have qemu-img wording', () => {
    const { ours } = setup('drop');
    expect(qcowkit(['commit', '-q', '-d', 'chain/top.qcow2'], ours).status).toBe(0);
    expect(map('chain/top.qcow2', ours).some((e) => e.depth === 0)).toBe(true);
    compare('chain/mid.qcow2', 'top.qcow2.before.raw', ours);
    const noBacking = qcowkit(['commit', 'chain/base.raw'], ours);
    expect(noBacking.status).toBe(1);
    expect(noBacking.stderr).toContain('Image does not have a backing file');
    const notFound = qcowkit(['commit', '-b', 'nothere.qcow2', 'chain/top.qcow2'], ours);
    expect(notFound.status).toBe(1);
    expect(notFound.stderr).toContain("Did not find 'nothere.qcow2' in the backing chain of 'chain/top.qcow2'");
  });

  it('a base shorter than the overlay grows, as qemu-img grows it', () => {
    const dir = join(work, 'grow');
    for (const side of ['ours', 'theirs']) {
      const d = join(dir, side);
      mkdirSync(d, { recursive: true });
      img(['create', '-q', '-f', 'qcow2', join(d, 'base.qcow2'), '1M'], work);
      qemuIo(['-f', 'qcow2', '-c', 'write -P 1 0 1M', join(d, 'base.qcow2')]);
      img(['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', join(d, 'top.qcow2'), '2M'], work);
      qemuIo(['-f', 'qcow2', '-c', 'write -P 2 1536k 64k', '-c', 'write -P 3 512k 64k', join(d, 'top.qcow2')]);
    }
    expect(qcowkit(['commit', '-q', 'top.qcow2'], join(dir, 'ours')).status).toBe(0);
    img(['commit', '-q', 'top.qcow2'], join(dir, 'theirs'));
    compare(join(dir, 'ours/base.qcow2'), join(dir, 'theirs/base.qcow2'), work, ['-s']);
    checkClean('base.qcow2', join(dir, 'ours'));
    expect(map('base.qcow2', join(dir, 'ours'))).toEqual(map('base.qcow2', join(dir, 'theirs')));
  });
});
