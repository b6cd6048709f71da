/**
 * `qcowkit amend` against `qemu-img amend` on copies of the same images: refusals print qemu-img's message and
 * exit 1 and leave the file byte for byte as it was; accepted changes leave an image qemu-img check calls clean,
 * with the same guest data (qemu-img compare, snapshots included) and the same qemu-img info answers as the
 * image qemu-img amended.
 */
import { copyFileSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { qemuIo, requireQemuImg, type QemuCheckResult, type QemuImgInfo } from '../../../../fixtures/corpus.js';
import { qcowkit, qemu } from '../test-support/run-cli.js';

requireQemuImg();

let work: string;
beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), 'qcowkit-pipeline-amend-'));
});
afterAll(() => rmSync(work, { recursive: true, force: true }));

const io = (file: string, ...commands: string[]) => expect(qemuIo([...commands.flatMap((c) => ['-c', c]), file], { cwd: work }).status).toBe(0);
const create = (file: string, size: string, ...args: string[]) => expect(qemu(['create', '-q', '-f', 'qcow2', ...args, file, size], work).status).toBe(0);
const info = (file: string) => JSON.parse(qemu(['info', '--output=json', file], work).stdout) as QemuImgInfo & { 'format-specific': { data: Record<string, unknown> } };
const check = (file: string) => JSON.parse(qemu(['check', '--output=json', file], work).stdout) as QemuCheckResult;
const snapshotNames = (file: string) => (info(file).snapshots ?? []).map((s) => s.name);

/** qemu-img's lines without "qemu-img: ", ours without "qcowkit: ", joined. */
function message(stderr: string): string {
  return stderr
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => l.replace(/^(qemu-img|qcowkit): /, ''))
    .join(' ');
}

/** Two copies of `source`: one for qemu-img, one for qcowkit. */
function twins(source: string, tag: string): { q: string; k: string } {
  const q = `${tag}-qemu.qcow2`;
  const k = `${tag}-qcowkit.qcow2`;
  copyFileSync(join(work, source), join(work, q));
  copyFileSync(join(work, source), join(work, k));
  return { q, k };
}

describe('refusals: qemu-img\'s message and exit code, nothing written', () => {
  beforeAll(() => {
    create('r.qcow2', '64M');
    io('r.qcow2', 'write -P 1 0 1M');
    expect(qemu(['snapshot', '-c', 's1', 'r.qcow2'], work).status).toBe(0);
    create('v2.qcow2', '64M', '-o', 'compat=0.10');
    create('extl2.qcow2', '64M', '-o', 'extended_l2=on');
    create('zstd.qcow2', '64M', '-o', 'compression_type=zstd');
    io('zstd.qcow2', 'write -c -P 3 0 64k');
    create('data.qcow2', '64M', '-o', 'data_file=data.raw');
    create('r8.qcow2', '64M', '-o', 'refcount_bits=8');
    expect(qemu(['create', '-q', '-f', 'raw', 'plain.raw', '1M'], work).status).toBe(0);
  });
  const cases: Array<[string, string, string[]]> = [
    ['a refcount that does not fit the new width', 'r.qcow2', ['-o', 'refcount_bits=1']],
    ['a width that is not a power of two', 'r.qcow2', ['-o', 'refcount_bits=3']],
    ['a width above 64', 'r.qcow2', ['-o', 'refcount_bits=128']],
    ['a width that is not a number', 'r.qcow2', ['-o', 'refcount_bits=x']],
    ['another width on a v2 target', 'r.qcow2', ['-o', 'compat=0.10,refcount_bits=8']],
    ['an unknown compat level', 'r.qcow2', ['-o', 'compat=0.9']],
    ['compat without a value', 'r.qcow2', ['-o', 'compat']],
    ['an unknown option', 'r.qcow2', ['-o', 'foo=1']],
    ['a creation-only option', 'r.qcow2', ['-o', 'cluster_size=4k']],
    ['another creation-only option', 'r.qcow2', ['-o', 'extended_l2=on']],
    ['a new backing file', 'r.qcow2', ['-o', 'backing_file=x']],
    ['a bad boolean', 'r.qcow2', ['-o', 'lazy_refcounts=maybe']],
    ['a bad size', 'r.qcow2', ['-o', 'size=abc']],
    ['encryption options without encryption', 'r.qcow2', ['-o', 'encrypt.new-secret=x']],
    ['no -o', 'r.qcow2', []],
    ['lazy refcounts on v2', 'v2.qcow2', ['-o', 'lazy_refcounts=on']],
    ['downgrading extended L2', 'extl2.qcow2', ['-o', 'compat=0.10']],
    ['downgrading zstd with compressed clusters', 'zstd.qcow2', ['-o', 'compat=0.10']],
    ['downgrading an external data file', 'data.qcow2', ['-o', 'compat=0.10']],
    ['downgrading 8-bit refcounts', 'r8.qcow2', ['-o', 'compat=0.10']],
    ['data_file on an image without one', 'r.qcow2', ['-o', 'data_file=x.raw']],
    ['a raw image', 'plain.raw', ['-f', 'raw', '-o', 'compat=1.1']],
  ];
  for (const [name, source, args] of cases) {
    it(name, () => {
      const { q, k } = twins(source, `refuse-${name.replace(/\W+/g, '_')}`);
      const before = readFileSync(join(work, k));
      const theirs = qemu(['amend', ...args, q], work);
      const ours = qcowkit(['amend', ...args, k], work);
      expect(theirs.status).toBe(1);
      expect(ours.status).toBe(1);
      expect(message(ours.stderr)).toBe(message(theirs.stderr));
      expect(readFileSync(join(work, k)).equals(before)).toBe(true);
    });
  }
});

describe('changes, as qemu-img makes them', () => {
  interface Change {
    name: string;
    build: () => string;
    options: string;
  }
  const changes: Change[] = [
    {
      name: 'refcount_bits=64 with a snapshot',
      build: () => {
        create('c1.qcow2', '64M');
        io('c1.qcow2', 'write -P 1 0 1M', 'write -P 2 40M 64k');
        expect(qemu(['snapshot', '-c', 's1', 'c1.qcow2'], work).status).toBe(0);
        io('c1.qcow2', 'write -P 3 0 64k');
        return 'c1.qcow2';
      },
      options: 'refcount_bits=64',
    },
    {
      name: 'refcount_bits=1 with 512-byte clusters',
      build: () => {
        create('c2.qcow2', '8M', '-o', 'cluster_size=512');
        io('c2.qcow2', 'write -P 1 0 3M');
        return 'c2.qcow2';
      },
      options: 'refcount_bits=1',
    },
    {
      name: 'compat=0.10 with zero clusters (plain and preallocated) and a snapshot',
      build: () => {
        create('c3.qcow2', '64M');
        io('c3.qcow2', 'write -P 1 0 1M', 'write -z 2M 1M', 'write -P 2 4M 64k', 'write -z 4M 64k');
        expect(qemu(['snapshot', '-c', 's1', 'c3.qcow2'], work).status).toBe(0);
        io('c3.qcow2', 'write -z 8M 64k', 'write -P 3 9M 1M');
        return 'c3.qcow2';
      },
      options: 'compat=0.10',
    },
    {
      name: 'compat=0.10 of an overlay: zero clusters over backing data become zero-filled clusters',
      build: () => {
        create('c4base.qcow2', '64M');
        io('c4base.qcow2', 'write -P 9 0 64M');
        create('c4.qcow2', '64M', '-b', 'c4base.qcow2', '-F', 'qcow2');
        io('c4.qcow2', 'write -z 0 1M', 'write -z 5M 128k', 'write -P 4 10M 1M');
        expect(qemu(['snapshot', '-c', 's1', 'c4.qcow2'], work).status).toBe(0);
        io('c4.qcow2', 'write -z 20M 1M');
        return 'c4.qcow2';
      },
      options: 'compat=0.10',
    },
    {
      name: 'compat=1.1,refcount_bits=8,lazy_refcounts=on on a v2 image with a snapshot',
      build: () => {
        create('c5.qcow2', '64M', '-o', 'compat=0.10');
        io('c5.qcow2', 'write -P 1 0 1M');
        expect(qemu(['snapshot', '-c', 's1', 'c5.qcow2'], work).status).toBe(0);
        return 'c5.qcow2';
      },
      options: 'compat=1.1,refcount_bits=8,lazy_refcounts=on',
    },
    {
      name: 'zstd without compressed clusters, downgraded (becomes zlib)',
      build: () => {
        create('c6.qcow2', '64M', '-o', 'compression_type=zstd');
        io('c6.qcow2', 'write -P 5 0 1M');
        return 'c6.qcow2';
      },
      options: 'compat=0.10',
    },
    {
      name: 'size=128M then lazy_refcounts=off',
      build: () => {
        create('c7.qcow2', '64M', '-o', 'lazy_refcounts=on');
        io('c7.qcow2', 'write -P 5 60M 4M');
        return 'c7.qcow2';
      },
      options: 'size=128M,lazy_refcounts=off',
    },
  ];
  for (const change of changes) {
    it(change.name, () => {
      const { q, k } = twins(change.build(), `change-${change.name.replace(/\W+/g, '_')}`);
      const before = `${k}.before.qcow2`;
      copyFileSync(join(work, k), join(work, before));
      expect(qemu(['amend', '-o', change.options, q], work).status).toBe(0);
      const ours = qcowkit(['amend', '-o', change.options, k], work);
      expect(ours.status, ours.stderr).toBe(0);
      expect(ours.stdout).toBe('');
      const c = check(k);
      expect(c.corruptions ?? 0).toBe(0);
      expect(c.leaks ?? 0).toBe(0);
      expect(qemu(['compare', q, k], work).stdout).toBe('Images are identical.\n');
      const a = info(q);
      const b = info(k);
      expect(b['virtual-size']).toBe(a['virtual-size']);
      expect(b['format-specific'].data).toEqual(a['format-specific'].data);
      expect(snapshotNames(k)).toEqual(snapshotNames(q));
      for (const s of snapshotNames(before)) {
        expect(qemu(['convert', '-l', `snapshot.name=${s}`, '-O', 'raw', before, `${k}.snap-before.raw`], work).status).toBe(0);
        expect(qemu(['convert', '-l', `snapshot.name=${s}`, '-O', 'raw', k, `${k}.snap-after.raw`], work).status).toBe(0);
        expect(readFileSync(join(work, `${k}.snap-after.raw`)).equals(readFileSync(join(work, `${k}.snap-before.raw`))), `snapshot ${s}`).toBe(true);
      }
    });
  }

  it('compat=0.10 keeps a snapshot whose cluster the active disk has zeroed (qemu-img 7.2 zeroes the snapshot\'s data and leaves a COPIED error)', () => {
    create('shared.qcow2', '16M');
    io('shared.qcow2', 'write -P 0x44 1M 64k');
    expect(qemu(['snapshot', '-c', 's1', 'shared.qcow2'], work).status).toBe(0);
    io('shared.qcow2', 'write -z 1M 64k');
    const { q, k } = twins('shared.qcow2', 'shared');
    expect(qemu(['convert', '-l', 'snapshot.name=s1', '-O', 'raw', 'shared.qcow2', 'shared-s1.raw'], work).status).toBe(0);
    expect(qemu(['amend', '-o', 'compat=0.10', q], work).status).toBe(0);
    expect(check(q).corruptions).toBeGreaterThan(0);
    expect(qcowkit(['amend', '-o', 'compat=0.10', k], work).status).toBe(0);
    const c = check(k);
    expect(c.corruptions ?? 0).toBe(0);
    expect(c.leaks ?? 0).toBe(0);
    expect(qemu(['compare', 'shared.qcow2', k], work).status).toBe(0);
    expect(qemu(['convert', '-l', 'snapshot.name=s1', '-O', 'raw', k, 'shared-s1-after.raw'], work).status).toBe(0);
    expect(readFileSync(join(work, 'shared-s1-after.raw')).equals(readFileSync(join(work, 'shared-s1.raw')))).toBe(true);
  });

  it('compat=0.10 with persistent bitmaps: qemu-img keeps their (now unusable) extension and leaks their clusters; qcowkit drops and frees them', () => {
    create('bm.qcow2', '64M');
    expect(qemu(['bitmap', '--add', 'bm.qcow2', 'b1'], work).status).toBe(0);
    io('bm.qcow2', 'write -P 3 0 1M');
    const { q, k } = twins('bm.qcow2', 'bm');
    expect(qemu(['amend', '-o', 'compat=0.10', q], work).status).toBe(0);
    expect(check(q).leaks ?? 0).toBeGreaterThan(0);
    expect(qcowkit(['amend', '-o', 'compat=0.10', k], work).status).toBe(0);
    const c = check(k);
    expect(c.leaks ?? 0).toBe(0);
    expect(c.corruptions ?? 0).toBe(0);
    expect(qemu(['info', k], work).stderr).toBe('');
    expect(qemu(['compare', q, k], work).status).toBe(0);
  });

  it('-p prints qemu-img\'s progress line; -o help lists the options; --progress=json speaks for programs', () => {
    create('p.qcow2', '64M');
    io('p.qcow2', 'write -P 1 0 1M');
    const p = qcowkit(['amend', '-p', '-o', 'refcount_bits=32', 'p.qcow2'], work);
    expect(p.status).toBe(0);
    expect(p.stdout).toMatch(/^ {4}\(0\.00\/100%\)\r.* {4}\(100\.00\/100%\)\r\n$/s);
    const j = qcowkit(['amend', '--progress=json', '-o', 'refcount_bits=16', 'p.qcow2'], work);
    expect(j.status).toBe(0);
    expect(JSON.parse(j.stderr.trim().split('\n').at(-1)!)).toMatchObject({ operation: 'amend', status: 'done', percent: 100 });
    const help = qcowkit(['amend', '-o', 'help', 'p.qcow2'], work);
    expect(help.status).toBe(0);
    const names = (out: string) => [...out.matchAll(/^ {2}(\w+)=/gm)].map((m) => m[1]).filter((n) => !n!.startsWith('encrypt'));
    expect(names(help.stdout)).toEqual(names(qemu(['amend', '-o', 'help', 'p.qcow2'], work).stdout).filter((n) => !n!.startsWith('encrypt')));
    expect(check('p.qcow2').corruptions ?? 0).toBe(0);
  });
});
