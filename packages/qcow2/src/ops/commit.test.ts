import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { hasQemuImg, requireQemuImg } from '../../../../fixtures/corpus.js';
import { nodeCodecs, nodeHostFiles } from '../node/index.js';
import { commitImage } from './commit.js';

requireQemuImg();

function run(tool: string, args: string[], cwd: string): string {
  const r = spawnSync(tool, args, { cwd, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${tool} ${args.join(' ')}: ${r.stdout}${r.stderr}`);
  return r.stdout;
}

function rawView(dir: string, file: string, extra: string[] = []): Buffer {
  run('qemu-img', ['convert', ...extra, '-O', 'raw', file, `${file}.view`], dir);
  const bytes = readFileSync(join(dir, `${file}.view`));
  rmSync(join(dir, `${file}.view`));
  return bytes;
}

function depths(dir: string, file: string): number[] {
  return (JSON.parse(run('qemu-img', ['map', '--output=json', file], dir)) as Array<{ depth: number }>).map((e) => e.depth);
}

describe.runIf(hasQemuImg())('commitImage on images qemu made', { timeout: 60_000 }, () => {
  const work = mkdtempSync(join(tmpdir(), 'qcowkit-commit-op-'));
  afterAll(() => rmSync(work, { recursive: true, force: true }));
  let n = 0;
  const fresh = (): string => {
    const dir = join(work, String(n++));
    mkdirSync(dir);
    return dir;
  };
  const commit = (dir: string, file: string, base?: string) =>
    commitImage(join(dir, file), { hostFiles: nodeHostFiles, codecs: nodeCodecs, ...(base === undefined ? {} : { base }) });

  it('an overlay with internal snapshots: emptied, its snapshots keep their own data (as with qemu-img), check clean', async () => {
    const ours = fresh();
    const theirs = fresh();
    for (const dir of [ours, theirs]) {
      run('qemu-img', ['create', '-q', '-f', 'qcow2', 'base.qcow2', '4M'], dir);
      run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', 'top.qcow2'], dir);
      run('qemu-io', ['-c', 'write -P 1 0 1M', '-c', 'write -c -P 2 2M 64k', 'top.qcow2'], dir);
      run('qemu-img', ['snapshot', '-c', 'snap', 'top.qcow2'], dir);
      run('qemu-io', ['-c', 'write -P 3 512k 1M', '-c', 'write -z 3M 128k', 'top.qcow2'], dir);
    }
    const snapshotBefore = rawView(ours, 'top.qcow2', ['-l', 'snap']);
    const viewBefore = rawView(ours, 'top.qcow2');
    const result = await commit(ours, 'top.qcow2');
    expect(result).toMatchObject({ baseDepth: 1, emptied: true });
    run('qemu-img', ['commit', '-q', 'top.qcow2'], theirs);
    run('qemu-img', ['check', 'top.qcow2'], ours);
    run('qemu-img', ['check', 'base.qcow2'], ours);
    expect(depths(ours, 'top.qcow2').every((d) => d > 0)).toBe(true);
    expect(rawView(ours, 'top.qcow2').equals(viewBefore)).toBe(true);
    expect(rawView(ours, 'base.qcow2').equals(viewBefore)).toBe(true);
    // The snapshot still holds its own clusters; where it reads through, it sees the base, which the commit changed
    // (for qemu-img too).
    const snapshotAfter = rawView(ours, 'top.qcow2', ['-l', 'snap']);
    expect(snapshotAfter.subarray(0, 1024 * 1024).equals(snapshotBefore.subarray(0, 1024 * 1024))).toBe(true);
    expect(snapshotAfter.subarray(2 * 1024 * 1024, 2 * 1024 * 1024 + 65536).equals(snapshotBefore.subarray(2 * 1024 * 1024, 2 * 1024 * 1024 + 65536))).toBe(true);
    expect(snapshotAfter.equals(rawView(theirs, 'top.qcow2', ['-l', 'snap']))).toBe(true);
  });

  it('v2 (compat=0.10) and extended L2 overlays are emptied cleanly', async () => {
    for (const options of ['compat=0.10', 'extended_l2=on,cluster_size=64k']) {
      const dir = fresh();
      run('qemu-img', ['create', '-q', '-f', 'qcow2', 'base.qcow2', '4M'], dir);
      run('qemu-io', ['-c', 'write -P 9 0 4M', 'base.qcow2'], dir);
      run('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', options, '-b', 'base.qcow2', '-F', 'qcow2', 'top.qcow2'], dir);
      run('qemu-io', ['-c', 'write -P 1 1000 5000', '-c', 'write -z 1M 1M', '-c', 'write -P 4 3M 100k', 'top.qcow2'], dir);
      const viewBefore = rawView(dir, 'top.qcow2');
      await commit(dir, 'top.qcow2');
      run('qemu-img', ['check', 'top.qcow2'], dir);
      run('qemu-img', ['check', 'base.qcow2'], dir);
      expect(depths(dir, 'top.qcow2').every((d) => d > 0), options).toBe(true);
      expect(rawView(dir, 'base.qcow2').equals(viewBefore), options).toBe(true);
      // The emptied file is cut after its last structure in use.
      expect(statSync(join(dir, 'top.qcow2')).size).toBeLessThanOrEqual(5 * 65536);
    }
  });

  it('-b through a shorter intermediate image: the zeros it shows past its end reach the base, as with qemu-img', async () => {
    const ours = fresh();
    const theirs = fresh();
    for (const dir of [ours, theirs]) {
      run('qemu-img', ['create', '-q', '-f', 'qcow2', 'base.qcow2', '2M'], dir);
      run('qemu-io', ['-c', 'write -P 5 0 2M', 'base.qcow2'], dir);
      run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', 'mid.qcow2', '1M'], dir);
      run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'mid.qcow2', '-F', 'qcow2', 'top.qcow2', '2M'], dir);
      run('qemu-io', ['-c', 'write -P 6 1536k 64k', 'top.qcow2'], dir);
    }
    const viewBefore = rawView(ours, 'top.qcow2');
    const result = await commit(ours, 'top.qcow2', 'base.qcow2');
    expect(result).toMatchObject({ baseDepth: 2, emptied: false });
    run('qemu-img', ['commit', '-q', '-b', 'base.qcow2', 'top.qcow2'], theirs);
    expect(rawView(ours, 'base.qcow2').equals(viewBefore)).toBe(true);
    expect(rawView(ours, 'base.qcow2').equals(rawView(theirs, 'base.qcow2'))).toBe(true);
    run('qemu-img', ['check', 'base.qcow2'], ours);
  });
});
