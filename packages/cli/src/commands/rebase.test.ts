import { existsSync, mkdtempSync, readFileSync, renameSync, rmSync } from 'node:fs';
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

function compare(a: string, b: string, cwd: string): void {
  const r = qemuImg(['compare', a, b], { cwd });
  expect(r.status, `qemu-img compare ${a} ${b}: ${r.stdout}${r.stderr}`).toBe(0);
}

function info(file: string, cwd: string): Record<string, unknown> {
  return JSON.parse(img(['info', '--output=json', file], cwd)) as Record<string, unknown>;
}

describe.runIf(hasQemuImg())('qcowkit rebase', { timeout: 120_000 }, () => {
  const work = mkdtempSync(join(tmpdir(), 'qcowkit-rebase-cli-'));
  afterAll(() => rmSync(work, { recursive: true, force: true }));
  beforeAll(() => {
    expect(existsSync(CLI_MAIN), `${CLI_MAIN} is missing: build first (npx tsc -b packages/qcow2 packages/cli)`).toBe(true);
  });

  /** A copy of the corpus chain in `dir/chain` and a raw copy of what top.qcow2 showed before. */
  function setup(name: string): string {
    const dir = join(work, name);
    copyImage(corpusDir(), findImage(corpusDir(), 'chain/top.qcow2'), dir);
    img(['convert', '-O', 'raw', 'chain/top.qcow2', 'top.before.raw'], dir);
    return dir;
  }

  it('safe rebase onto the raw base keeps the guest contents; info shows the new reference; same extents as qemu-img', () => {
    const dir = setup('onto-base');
    const theirs = setup('onto-base-qemu');
    const r = qcowkit(['rebase', '-b', 'base.raw', '-F', 'raw', 'chain/top.qcow2'], dir);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toBe('');
    img(['rebase', '-b', 'base.raw', '-F', 'raw', 'chain/top.qcow2'], theirs);
    compare('chain/top.qcow2', 'top.before.raw', dir);
    img(['check', 'chain/top.qcow2'], dir);
    const i = info('chain/top.qcow2', dir);
    expect(i['backing-filename']).toBe('base.raw');
    expect(i['backing-filename-format']).toBe('raw');
    expect(img(['map', '--output=json', 'chain/top.qcow2'], dir)).toBe(img(['map', '--output=json', 'chain/top.qcow2'], theirs));
  });

  it('rebase -b "" makes the image standalone with the same contents', () => {
    const dir = setup('standalone');
    const r = qcowkit(['rebase', '-p', '-b', '', 'chain/top.qcow2'], dir);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/\(100\.00\/100%\)\r\n$/);
    compare('chain/top.qcow2', 'top.before.raw', dir);
    img(['check', 'chain/top.qcow2'], dir);
    const i = info('chain/top.qcow2', dir);
    expect(i['backing-filename']).toBeUndefined();
    expect(i['backing-filename-format']).toBeUndefined();
    // Standalone for real: the old chain can go.
    rmSync(join(dir, 'chain/mid.qcow2'));
    rmSync(join(dir, 'chain/base.raw'));
    compare('chain/top.qcow2', 'top.before.raw', dir);
  });

  it('rebase onto a different image: only the clusters that differ are copied, the view is unchanged', () => {
    const dir = setup('other');
    img(['create', '-q', '-f', 'qcow2', 'chain/other.qcow2', '128K'], dir);
    qemuIo(['-f', 'qcow2', '-c', 'write -P 0xb0 0 64k', '-c', 'write -P 0x3c 64k 16k', 'chain/other.qcow2'], { cwd: dir });
    expect(qcowkit(['rebase', '-q', '-b', 'other.qcow2', '-F', 'qcow2', 'chain/top.qcow2'], dir).status).toBe(0);
    compare('chain/top.qcow2', 'top.before.raw', dir);
    img(['check', 'chain/top.qcow2'], dir);
    expect(info('chain/top.qcow2', dir)['backing-filename']).toBe('other.qcow2');
  });

  it('rebase -u after the backing file was renamed repairs the chain', () => {
    const dir = setup('renamed');
    renameSync(join(dir, 'chain/mid.qcow2'), join(dir, 'chain/middle.qcow2'));
    expect(qemuImg(['compare', 'chain/top.qcow2', 'top.before.raw'], { cwd: dir }).status).not.toBe(0);
    const before = readFileSync(join(dir, 'chain/top.qcow2'));
    const r = qcowkit(['rebase', '-u', '-b', 'middle.qcow2', '-F', 'qcow2', 'chain/top.qcow2'], dir);
    expect(r.status, r.stderr).toBe(0);
    compare('chain/top.qcow2', 'top.before.raw', dir);
    img(['check', 'chain/top.qcow2'], dir);
    expect(info('chain/top.qcow2', dir)['backing-filename']).toBe('middle.qcow2');
    // Only cluster 0 changed.
    const after = readFileSync(join(dir, 'chain/top.qcow2'));
    expect(after.length).toBe(before.length);
    expect(after.subarray(16384).equals(before.subarray(16384))).toBe(true);
  });

  it('refuses, without changing anything: no -F, a new backing file that does not open as given, a loop', () => {
    const dir = setup('refusals');
    const original = readFileSync(join(dir, 'chain/top.qcow2'));
    const noFormat = qcowkit(['rebase', '-b', 'base.raw', 'chain/top.qcow2'], dir);
    expect(noFormat.status).toBe(1);
    expect(noFormat.stderr).toContain("Could not change the backing file to 'base.raw': backing format must be specified");
    // qemu-img 7.2 takes the layer from the old chain here and writes a wrong format; qcowkit opens it as told.
    const wrongFormat = qcowkit(['rebase', '-b', 'base.raw', '-F', 'qcow2', 'chain/top.qcow2'], dir);
    expect(wrongFormat.status).toBe(1);
    expect(wrongFormat.stderr).toContain('Could not open new backing file');
    const missing = qcowkit(['rebase', '-b', 'nothere.qcow2', '-F', 'qcow2', 'chain/top.qcow2'], dir);
    expect(missing.status).toBe(1);
    expect(missing.stderr).toContain("Could not open new backing file 'chain/nothere.qcow2'");
    img(['create', '-q', '-f', 'qcow2', '-b', 'top.qcow2', '-F', 'qcow2', 'chain/above.qcow2'], dir);
    const loop = qcowkit(['rebase', '-b', 'above.qcow2', '-F', 'qcow2', 'chain/top.qcow2'], dir);
    expect(loop.status).toBe(1);
    expect(loop.stderr).toMatch(/loop/);
    const none = qcowkit(['rebase', 'chain/top.qcow2'], dir);
    expect(none.status).toBe(1);
    expect(none.stderr).toContain('Must specify backing file (-b) or use unsafe mode (-u)');
    expect(readFileSync(join(dir, 'chain/top.qcow2')).equals(original)).toBe(true);
  });
});
