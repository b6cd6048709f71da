/**
 * `qcowkit create` against `qemu-img create`: every test runs the same arguments with both tools, each in its own
 * directory with the same relative layout (work/ours/CASE and work/theirs/CASE), then compares what they print,
 * their exit status, the files they leave, `qemu-img info --output=json` of the results (all but "actual-size")
 * and, where qemu-img makes the same file, the bytes. `qemu-img check` must be clean on every image we create.
 */
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hasQemuImg, qemuImg, requireQemuImg, type QemuImgInfo } from '../../../../fixtures/corpus.js';
import { CLI_MAIN, qcowkit, qemu, type Run } from '../test-support/run-cli.js';

requireQemuImg();




/** Lists every file under `dir`, relative, '/'-separated, sorted. */
function listFiles(dir: string, prefix = ''): string[] {
  if (!existsSync(dir)) return [];
  const out: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const rel = prefix ? `${prefix}/${entry.name}` : entry.name;
    if (entry.isDirectory()) out.push(...listFiles(join(dir, entry.name), rel));
    else out.push(rel);
  }
  return out.sort();
}

/** Byte equality of two files, read in chunks (like cmp); sparse files of several GiB are compared by size only. */
function sameBytes(a: string, b: string): boolean {
  const size = statSync(a).size;
  if (size !== statSync(b).size) return false;
  if (size > 256 * 1024 * 1024) throw new Error(`sameBytes: ${a} is too large to compare`);
  const fa = openSync(a, 'r');
  const fb = openSync(b, 'r');
  try {
    const ba = Buffer.alloc(1 << 20);
    const bb = Buffer.alloc(1 << 20);
    for (let at = 0; at < size; at += ba.length) {
      const n = readSync(fa, ba, 0, ba.length, at);
      const m = readSync(fb, bb, 0, bb.length, at);
      if (n !== m || !ba.subarray(0, n).equals(bb.subarray(0, m))) return false;
    }
    return true;
  } finally {
    closeSync(fa);
    closeSync(fb);
  }
}

/** Index of the first differing byte (for messages), or -1. */
function firstDifference(a: string, b: string): number {
  const ba = Buffer.alloc(1 << 20);
  const bb = Buffer.alloc(1 << 20);
  const fa = openSync(a, 'r');
  const fb = openSync(b, 'r');
  try {
    for (let at = 0; ; at += ba.length) {
      const n = readSync(fa, ba, 0, ba.length, at);
      const m = readSync(fb, bb, 0, bb.length, at);
      for (let i = 0; i < Math.min(n, m); i++) if (ba[i] !== bb[i]) return at + i;
      if (n !== m) return at + Math.min(n, m);
      if (n === 0) return -1;
    }
  } finally {
    closeSync(fa);
    closeSync(fb);
  }
}

/** qemu-img info --output=json, without the filesystem-dependent "actual-size". */
function info(file: string, cwd: string, extra: string[] = []): QemuImgInfo {
  const r = qemu(['info', '--output=json', ...extra, file], cwd);
  expect(r.status, `qemu-img info ${file} in ${cwd}: ${r.stderr}`).toBe(0);
  const parsed = JSON.parse(r.stdout) as QemuImgInfo;
  delete parsed['actual-size'];
  return parsed;
}

/** qemu's error lines with our program name; qemu 7.2's "version=v3" hint names the -o option qemu-img users type. */
/** qemu-img create's first line for a size it cannot read (cvtnum). */
const BAD_SIZE = 'Invalid image size specified. You may use k, M, G, T, P or E suffixes for kilobytes';

function asOurs(stderr: string): string {
  return stderr.replace(/^qemu-img: /gm, 'qcowkit: ').replace(/\(use version=v3 or greater\)/g, '(use compat=1.1 or greater)');
}

/** What a create case expects of the file(s) it makes. */
interface CreateCase {
  /** Test name and directory name. */
  id: string;
  /** `create` arguments (file names relative to the case directory). */
  args: string[];
  /** The image made (relative to the case directory). */
  image: string;
  /** Prepares both case directories identically (backing files…), run with cwd = the case directory. */
  setup?: (dir: string) => void;
  /** Whether qemu-img makes the same bytes. false: qemu lays the file out differently, and that is fine. */
  identical: boolean;
  /** Fields `qemu-img info --output=json` must show (top level, and "format-specific".data under `specific`). */
  fields?: Partial<QemuImgInfo>;
  specific?: Record<string, unknown>;
  /** Opens the image without its backing file for check (for -u with a missing backing file). */
  noBacking?: boolean;
}

describe.runIf(hasQemuImg())('qcowkit create equals qemu-img create', { timeout: 180_000 }, () => {
  const work = mkdtempSync(join(tmpdir(), 'qcowkit-create-cli-'));
  afterAll(() => rmSync(work, { recursive: true, force: true }));
  beforeAll(() => {
    expect(existsSync(CLI_MAIN), `${CLI_MAIN} is missing: build first (npx tsc -b packages/qcow2 packages/cli, or npm test)`).toBe(true);
  });

  /** Byte-identity outcome of every case, for the summary printed at the end. */
  const identity: Array<[string, string]> = [];
  afterAll(() => {
    if (identity.length > 0) console.log(`create: byte identity with qemu-img create\n${identity.map(([id, r]) => `  ${r.padEnd(10)} ${id}`).join('\n')}`);
  });

  const dirs = (id: string): { ours: string; theirs: string } => {
    const ours = join(work, 'ours', id);
    const theirs = join(work, 'theirs', id);
    mkdirSync(ours, { recursive: true });
    mkdirSync(theirs, { recursive: true });
    return { ours, theirs };
  };

  const img = (args: string[], cwd: string): void => {
    const r = qemuImg(args, { cwd });
    expect(r.status, `qemu-img ${args.join(' ')}: ${r.stderr}`).toBe(0);
  };

  /** Runs one case with both tools and compares everything. */
  function expectSameCreate(c: CreateCase): void {
    const { ours, theirs } = dirs(c.id);
    c.setup?.(ours);
    c.setup?.(theirs);
    const before = listFiles(ours);
    const theirRun = qemu(['create', ...c.args], theirs);
    expect(theirRun.status, `qemu-img create ${c.args.join(' ')}: ${theirRun.stderr}`).toBe(0);
    const ourRun = qcowkit(['create', ...c.args], ours);
    expect(ourRun.stderr, `qcowkit create ${c.args.join(' ')}`).toBe('');
    expect(ourRun.status).toBe(0);
    // The "Formatting '…', fmt=… " line, byte for byte (soft: the file checks below still run).
    expect.soft(ourRun.stdout, 'Formatting line').toBe(theirRun.stdout);
    // The same files (the image, and the external data file when there is one).
    expect(listFiles(ours)).toEqual(listFiles(theirs));
    expect(listFiles(ours).length).toBeGreaterThan(before.length);

    const format = c.image.endsWith('.raw') ? 'raw' : 'qcow2';
    const ourInfo = info(c.image, ours, ['-f', format]);
    expect(ourInfo).toEqual(info(c.image, theirs, ['-f', format]));
    for (const [key, value] of Object.entries(c.fields ?? {})) expect(ourInfo[key], key).toEqual(value);
    if (c.specific) {
      const data = ourInfo['format-specific']?.data ?? {};
      for (const [key, value] of Object.entries(c.specific)) expect(data[key], `format-specific ${key}`).toEqual(value);
    }

    if (format === 'qcow2') {
      // A missing backing file makes qemu-img check fail to open the image: check it with the backing link cut.
      const target = c.noBacking
        ? `json:${JSON.stringify({ driver: 'qcow2', file: { driver: 'file', filename: c.image }, backing: null })}`
        : c.image;
      const check = qemu(['check', target], ours);
      expect.soft(check.status, `qemu-img check ${c.image}: ${check.stdout}${check.stderr}`).toBe(0);
      expect.soft(check.stdout).toContain('No errors were found on the image.');
    }

    const identical = listFiles(theirs).every((f) => sameBytes(join(ours, f), join(theirs, f)));
    identity.push([c.id, identical ? 'identical' : 'different']);
    if (c.identical) {
      for (const f of listFiles(theirs)) {
        const at = firstDifference(join(ours, f), join(theirs, f));
        expect(at, `${f} differs from qemu-img's at byte ${at} (sizes ${statSync(join(ours, f)).size} / ${statSync(join(theirs, f)).size})`).toBe(-1);
      }
    }
  }

  const qcow2Case = (id: string, options: string, size: string, more: Partial<CreateCase> = {}): CreateCase => ({
    id,
    args: ['-f', 'qcow2', ...(options ? ['-o', options] : []), `${id}.qcow2`, size],
    image: `${id}.qcow2`,
    identical: true,
    ...more,
  });

  describe('plain qcow2 images: qemu-img makes the same bytes', () => {
    const cases: CreateCase[] = [
      qcow2Case('default', '', '64M', { fields: { 'virtual-size': 64 * 2 ** 20, 'cluster-size': 65536 }, specific: { compat: '1.1', 'refcount-bits': 16, 'compression-type': 'zlib', 'lazy-refcounts': false, 'extended-l2': false } }),
      // qemu-img leaves the feature name table out of images with clusters of 4 KiB and less.
      qcow2Case('cluster-512', 'cluster_size=512', '64M', { fields: { 'cluster-size': 512 } }),
      qcow2Case('cluster-4k', 'cluster_size=4k', '64M', { fields: { 'cluster-size': 4096 } }),
      qcow2Case('cluster-8k', 'cluster_size=8k', '64M', { fields: { 'cluster-size': 8192 } }),
      qcow2Case('cluster-64k', 'cluster_size=64k', '64M', { fields: { 'cluster-size': 65536 } }),
      qcow2Case('cluster-2M', 'cluster_size=2M', '64M', { fields: { 'cluster-size': 2 * 2 ** 20 } }),
      ...[1, 2, 4, 8, 16, 32, 64].map((bits) => qcow2Case(`refcount-${bits}`, `refcount_bits=${bits}`, '64M', { specific: { 'refcount-bits': bits } })),
      qcow2Case('compat-0.10', 'compat=0.10', '64M', { specific: { compat: '0.10', 'refcount-bits': 16 } }),
      qcow2Case('compat-1.1', 'compat=1.1', '64M', { specific: { compat: '1.1' } }),
      qcow2Case('lazy-refcounts', 'lazy_refcounts=on', '64M', { specific: { 'lazy-refcounts': true } }),
      qcow2Case('extended-l2', 'extended_l2=on', '64M', { specific: { 'extended-l2': true } }),
      qcow2Case('extended-l2-16k', 'extended_l2=on,cluster_size=16k', '64M', { fields: { 'cluster-size': 16384 }, specific: { 'extended-l2': true } }),
      qcow2Case('zstd', 'compression_type=zstd', '64M', { specific: { 'compression-type': 'zstd' } }),
      qcow2Case('prealloc-off', 'preallocation=off', '64M'),
      qcow2Case('prealloc-metadata', 'preallocation=metadata', '64M'),
      qcow2Case('c512-refcount1', 'cluster_size=512,refcount_bits=1', '64M', { fields: { 'cluster-size': 512 }, specific: { 'refcount-bits': 1 } }),
      qcow2Case('c512-refcount1-1G', 'cluster_size=512,refcount_bits=1', '1G', { specific: { 'refcount-bits': 1 } }),
      qcow2Case('c2M-refcount64-100T', 'cluster_size=2M,refcount_bits=64', '100T', { fields: { 'virtual-size': 100 * 2 ** 40 }, specific: { 'refcount-bits': 64 } }),
      qcow2Case('100T', '', '100T', { fields: { 'virtual-size': 100 * 2 ** 40 } }),
      qcow2Case('v2-c4k', 'compat=0.10,cluster_size=4k', '64M', { fields: { 'cluster-size': 4096 }, specific: { compat: '0.10' } }),
      qcow2Case('everything-v3', 'extended_l2=on,compression_type=zstd,lazy_refcounts=on,refcount_bits=8', '64M', {
        specific: { 'extended-l2': true, 'compression-type': 'zstd', 'lazy-refcounts': true, 'refcount-bits': 8 },
      }),
      qcow2Case('prealloc-metadata-2M', 'preallocation=metadata,cluster_size=2M', '64M'),
      qcow2Case('prealloc-metadata-refcount1', 'preallocation=metadata,refcount_bits=1', '64M'),
      qcow2Case('prealloc-metadata-v2', 'preallocation=metadata,compat=0.10', '4M'),
      qcow2Case('prealloc-metadata-lazy', 'preallocation=metadata,lazy_refcounts=on', '4M'),
      qcow2Case('prealloc-metadata-extl2', 'preallocation=metadata,extended_l2=on', '4M'),
      qcow2Case('size-1000', '', '1000', { fields: { 'virtual-size': 1024 } }),
      qcow2Case('size-1.5k', '', '1.5k', { fields: { 'virtual-size': 1536 } }),
      qcow2Case('size-option', 'size=3M', '', { args: ['-f', 'qcow2', '-o', 'size=3M', 'size-option.qcow2'], fields: { 'virtual-size': 3 * 2 ** 20 } }),
      qcow2Case('size-0', '', '0', { fields: { 'virtual-size': 0 } }),
    ];
    for (const c of cases) it(c.id, () => expectSameCreate(c));
  });

  describe('qcow2 images qemu-img lays out differently (same info, clean check; bytes not compared)', () => {
    const cases: CreateCase[] = [
      // qemu-img preallocates the refcount structures for the whole file up front (at another place).
      qcow2Case('prealloc-falloc', 'preallocation=falloc', '4M', { identical: false }),
      qcow2Case('prealloc-full', 'preallocation=full', '4M', { identical: false }),
      qcow2Case('prealloc-falloc-4k', 'preallocation=falloc,cluster_size=4k', '4M', { identical: false }),
      qcow2Case('prealloc-full-extl2', 'preallocation=full,extended_l2=on', '4M', { identical: false }),
      // Refcount blocks for the big L1 table are allocated in another order; qemu's file ends 60 clusters later.
      qcow2Case('prealloc-metadata-512', 'preallocation=metadata,cluster_size=512', '64M', { identical: false }),
      qcow2Case('c512-refcount64-1G', 'cluster_size=512,refcount_bits=64', '1G', { identical: false, specific: { 'refcount-bits': 64 } }),
    ];
    for (const c of cases) it(c.id, () => expectSameCreate(c));

    it('preallocation=full and falloc give every cluster a host cluster, like qemu-img (same map)', () => {
      for (const id of ['prealloc-full', 'prealloc-falloc']) {
        const ours = qemu(['map', '--output=json', `${id}.qcow2`], join(work, 'ours', id));
        const theirs = qemu(['map', '--output=json', `${id}.qcow2`], join(work, 'theirs', id));
        expect(ours.status).toBe(0);
        expect(ours.stdout).toBe(theirs.stdout);
      }
    });
  });

  describe('external data files', () => {
    const cases: CreateCase[] = [
      qcow2Case('data-file', 'data_file=data-file.data', '4M', { specific: { 'data-file': 'data-file.data' } }),
      qcow2Case('data-file-raw', 'data_file=data-file-raw.data,data_file_raw=on', '4M', { specific: { 'data-file': 'data-file-raw.data', 'data-file-raw': true } }),
      qcow2Case('data-file-raw-4k', 'data_file=data-file-raw-4k.data,data_file_raw=on,cluster_size=4k', '4M', { specific: { 'data-file-raw': true } }),
      qcow2Case('data-file-metadata', 'data_file=data-file-metadata.data,preallocation=metadata', '4M'),
      qcow2Case('data-file-full', 'data_file=data-file-full.data,preallocation=full', '4M'),
      qcow2Case('data-file-raw-full', 'data_file=data-file-raw-full.data,data_file_raw=on,preallocation=full', '4M'),
      qcow2Case('data-file-extl2', 'data_file=data-file-extl2.data,extended_l2=on', '4M', { specific: { 'extended-l2': true } }),
      qcow2Case('data-file-in-subdir', 'data_file=data-file-in-subdir.data', '4M', {
        args: ['-f', 'qcow2', '-o', 'data_file=data-file-in-subdir.data', 'sub/data-file-in-subdir.qcow2', '4M'],
        image: 'sub/data-file-in-subdir.qcow2',
        setup: (dir) => mkdirSync(join(dir, 'sub'), { recursive: true }),
      }),
    ];
    for (const c of cases) {
      it(c.id, () => {
        if (c.id !== 'data-file-in-subdir') return expectSameCreate(c);
        // qemu-img 7.2 resolves the data file name against the current directory, not the image's: compare the
        // image only, and check that ours put its data file next to the image (where it will be looked up).
        const { ours, theirs } = dirs(c.id);
        c.setup!(ours);
        c.setup!(theirs);
        const theirRun = qemu(['create', ...c.args], theirs);
        const ourRun = qcowkit(['create', ...c.args], ours);
        expect(ourRun.status, ourRun.stderr).toBe(0);
        expect(ourRun.stdout).toBe(theirRun.stdout);
        expect(sameBytes(join(ours, c.image), join(theirs, c.image))).toBe(true);
        expect(existsSync(join(ours, 'sub/data-file-in-subdir.data'))).toBe(true);
        expect(qemu(['check', 'data-file-in-subdir.qcow2'], join(ours, 'sub')).status).toBe(0);
      });
    }
  });

  describe('backing files', () => {
    /** sub/base.qcow2 (4 MiB), sub/odd.raw (196616 bytes, not a multiple of 512), up/base2.qcow2 (2 MiB). */
    const setup = (dir: string): void => {
      mkdirSync(join(dir, 'sub'), { recursive: true });
      mkdirSync(join(dir, 'up'), { recursive: true });
      img(['create', '-q', '-f', 'qcow2', 'sub/base.qcow2', '4M'], dir);
      img(['create', '-q', '-f', 'qcow2', 'up/base2.qcow2', '2M'], dir);
      writeFileSync(join(dir, 'sub/odd.raw'), new Uint8Array(196616).fill(7));
    };
    const backingCase = (id: string, args: string[], image: string, more: Partial<CreateCase> = {}): CreateCase => ({ id, args, image, identical: true, setup, ...more });
    const cases: CreateCase[] = [
      backingCase('without-size', ['-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', 'sub/top.qcow2'], 'sub/top.qcow2', {
        fields: { 'virtual-size': 4 * 2 ** 20, 'backing-filename': 'base.qcow2', 'full-backing-filename': 'sub/base.qcow2', 'backing-filename-format': 'qcow2' },
      }),
      backingCase('with-size', ['-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', 'sub/top.qcow2', '8M'], 'sub/top.qcow2', { fields: { 'virtual-size': 8 * 2 ** 20 } }),
      backingCase('smaller-than-backing', ['-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', 'sub/top.qcow2', '1M'], 'sub/top.qcow2', { fields: { 'virtual-size': 2 ** 20 } }),
      backingCase('up-a-directory', ['-f', 'qcow2', '-b', '../up/base2.qcow2', '-F', 'qcow2', 'sub/top.qcow2'], 'sub/top.qcow2', {
        fields: { 'virtual-size': 2 * 2 ** 20, 'backing-filename': '../up/base2.qcow2' },
      }),
      backingCase('options', ['-f', 'qcow2', '-o', 'backing_file=base.qcow2,backing_fmt=qcow2', 'sub/top.qcow2'], 'sub/top.qcow2', { fields: { 'virtual-size': 4 * 2 ** 20 } }),
      // A raw backing file of 196616 bytes: qemu sizes the overlay (and its Formatting line) 197120, rounded up to 512.
      backingCase('raw-backing-odd-size', ['-f', 'qcow2', '-b', 'odd.raw', '-F', 'raw', 'sub/top.qcow2'], 'sub/top.qcow2', { fields: { 'virtual-size': 197120, 'backing-filename-format': 'raw' } }),
      backingCase('v2', ['-f', 'qcow2', '-o', 'compat=0.10', '-b', 'base.qcow2', '-F', 'qcow2', 'sub/top.qcow2'], 'sub/top.qcow2', { specific: { compat: '0.10' } }),
      backingCase('extended-l2', ['-f', 'qcow2', '-o', 'extended_l2=on,cluster_size=32k', '-b', 'base.qcow2', '-F', 'qcow2', 'sub/top.qcow2'], 'sub/top.qcow2', {
        specific: { 'extended-l2': true },
      }),
      backingCase('cluster-4k', ['-f', 'qcow2', '-o', 'cluster_size=4k', '-b', 'base.qcow2', '-F', 'qcow2', 'sub/top.qcow2'], 'sub/top.qcow2'),
      // 512-byte clusters: the backing file name and format must still fit in cluster 0 (qemu drops the feature table).
      backingCase('cluster-512', ['-f', 'qcow2', '-o', 'cluster_size=512', '-b', 'base.qcow2', '-F', 'qcow2', 'sub/top.qcow2'], 'sub/top.qcow2', { fields: { 'cluster-size': 512 } }),
      backingCase('cluster-512-refcount1', ['-f', 'qcow2', '-o', 'cluster_size=512,refcount_bits=1', '-b', 'base.qcow2', '-F', 'qcow2', 'sub/top.qcow2'], 'sub/top.qcow2'),
      backingCase('lazy-zstd', ['-f', 'qcow2', '-o', 'lazy_refcounts=on,compression_type=zstd', '-b', 'base.qcow2', '-F', 'qcow2', 'sub/top.qcow2'], 'sub/top.qcow2'),
      backingCase('unsafe-missing', ['-f', 'qcow2', '-u', '-b', 'missing.qcow2', '-F', 'qcow2', 'sub/orphan.qcow2', '1M'], 'sub/orphan.qcow2', {
        noBacking: true,
        fields: { 'virtual-size': 2 ** 20, 'backing-filename': 'missing.qcow2' },
      }),
      backingCase('unsafe-existing', ['-f', 'qcow2', '-u', '-b', 'base.qcow2', '-F', 'qcow2', 'sub/top.qcow2', '3M'], 'sub/top.qcow2', { fields: { 'virtual-size': 3 * 2 ** 20 } }),
    ];
    for (const c of cases) it(c.id, () => expectSameCreate(c));
  });

  describe('raw images: sizes and suffixes', () => {
    const rawCase = (id: string, size: string, more: Partial<CreateCase> = {}): CreateCase => ({
      id,
      args: ['-f', 'raw', `${id}.raw`, size],
      image: `${id}.raw`,
      identical: true,
      ...more,
    });
    const cases: CreateCase[] = [
      rawCase('raw-0', '0', { fields: { 'virtual-size': 0 } }),
      rawCase('raw-512', '512', { fields: { 'virtual-size': 512 } }),
      // qemu-img's raw driver rounds the file up to a multiple of 512 bytes.
      rawCase('raw-1', '1', { fields: { 'virtual-size': 512 } }),
      rawCase('raw-511', '511', { fields: { 'virtual-size': 512 } }),
      rawCase('raw-1000', '1000', { fields: { 'virtual-size': 1024 } }),
      rawCase('raw-100b', '100b', { fields: { 'virtual-size': 512 } }),
      rawCase('raw-1k', '1k', { fields: { 'virtual-size': 1024 } }),
      rawCase('raw-1K', '1K', { fields: { 'virtual-size': 1024 } }),
      rawCase('raw-1.5k', '1.5k', { fields: { 'virtual-size': 1536 } }),
      rawCase('raw-0.5k', '0.5k', { fields: { 'virtual-size': 512 } }),
      rawCase('raw-1.5M', '1.5M', { fields: { 'virtual-size': 1.5 * 2 ** 20 } }),
      rawCase('raw-0x100', '0x100', { fields: { 'virtual-size': 512 } }),
      rawCase('raw-2G', '2G', { fields: { 'virtual-size': 2 * 2 ** 30 } }),
      rawCase('raw-1T', '1T', { fields: { 'virtual-size': 2 ** 40 } }),
      rawCase('raw-no-format-flag', '1M', { args: ['raw-no-format-flag.raw', '1M'], fields: { format: 'raw', 'virtual-size': 2 ** 20 } }),
      rawCase('raw-size-option', '', { args: ['-f', 'raw', '-o', 'size=3M', 'raw-size-option.raw'], fields: { 'virtual-size': 3 * 2 ** 20 } }),
      rawCase('raw-prealloc-off', '', { args: ['-f', 'raw', '-o', 'preallocation=off', 'raw-prealloc-off.raw', '100k'] }),
      rawCase('raw-prealloc-full', '', { args: ['-f', 'raw', '-o', 'preallocation=full', 'raw-prealloc-full.raw', '100k'] }),
      rawCase('raw-prealloc-falloc', '', { args: ['-f', 'raw', '-o', 'preallocation=falloc', 'raw-prealloc-falloc.raw', '100k'] }),
    ];
    for (const c of cases) {
      it(c.id, () => {
        // Multi-GiB sparse files: compare their sizes, not their (all zero) bytes.
        const big = c.id === 'raw-2G' || c.id === 'raw-1T';
        if (!big) return expectSameCreate(c);
        const { ours, theirs } = dirs(c.id);
        const theirRun = qemu(['create', ...c.args], theirs);
        const ourRun = qcowkit(['create', ...c.args], ours);
        expect(ourRun.status, ourRun.stderr).toBe(0);
        expect(ourRun.stdout).toBe(theirRun.stdout);
        expect(statSync(join(ours, c.image)).size).toBe(statSync(join(theirs, c.image)).size);
        expect(info(c.image, ours)).toEqual(info(c.image, theirs));
        // Sparse, like qemu-img's.
        expect(statSync(join(ours, c.image)).blocks * 512).toBeLessThan(1 << 20);
      });
    }
    it('preallocation=full allocates the raw file on disk', () => {
      const file = join(work, 'ours', 'raw-prealloc-full', 'raw-prealloc-full.raw');
      expect(statSync(file).blocks * 512).toBeGreaterThanOrEqual(100 * 1024);
    });
  });

  describe('invalid combinations: same message, exit status 1, no file left behind', () => {
    interface ErrorCase {
      id: string;
      args: string[];
      /** Exact: stdout and stderr equal qemu-img's (with our program name). Loose: only the given checks. */
      exact: boolean;
      /** For loose cases: text our one error line must contain. */
      mentions?: string[];
      setup?: (dir: string) => void;
    }
    const q = (id: string, options: string, exact = true, more: Partial<ErrorCase> = {}): ErrorCase => ({
      id,
      args: ['-f', 'qcow2', '-o', options, 'x.qcow2', '1M'],
      exact,
      ...more,
    });
    const cases: ErrorCase[] = [
      q('compat-0.10-refcount-1', 'compat=0.10,refcount_bits=1'),
      q('compat-0.10-refcount-64', 'compat=0.10,refcount_bits=64'),
      q('compat-0.10-lazy-refcounts', 'compat=0.10,lazy_refcounts=on'),
      q('compat-0.10-extended-l2', 'compat=0.10,extended_l2=on'),
      q('compat-0.10-zstd', 'compat=0.10,compression_type=zstd'),
      q('compat-0.10-data-file', 'compat=0.10,data_file=x.data'),
      q('extended-l2-4k', 'extended_l2=on,cluster_size=4k'),
      q('extended-l2-512', 'extended_l2=on,cluster_size=512'),
      q('cluster-size-1000', 'cluster_size=1000'),
      q('cluster-size-256', 'cluster_size=256'),
      q('cluster-size-4M', 'cluster_size=4M'),
      q('refcount-3', 'refcount_bits=3'),
      q('refcount-128', 'refcount_bits=128'),
      q('data-file-raw-alone', 'data_file_raw=on'),
      q('unknown-option', 'bogus=1'),
      q('lazy-refcounts-maybe', 'lazy_refcounts=maybe'),
      {
        id: 'backing-and-data-file-raw',
        args: ['-f', 'qcow2', '-u', '-o', 'data_file=x.data,data_file_raw=on', '-b', 'b.qcow2', '-F', 'qcow2', 'x.qcow2', '1M'],
        exact: true,
      },
      { id: 'no-size', args: ['-f', 'qcow2', 'x.qcow2'], exact: true },
      { id: 'unsafe-without-size', args: ['-f', 'qcow2', '-u', '-b', 'missing.qcow2', '-F', 'qcow2', 'x.qcow2'], exact: true },
      { id: 'raw-no-size', args: ['-f', 'raw', 'x.raw'], exact: true },
      { id: 'raw-cluster-size', args: ['-f', 'raw', '-o', 'cluster_size=4k', 'x.raw', '1M'], exact: true },
      { id: 'raw-backing', args: ['-f', 'raw', '-b', 'b.raw', '-F', 'raw', 'x.raw', '1M'], exact: true },
      { id: 'too-large-for-4k-clusters', args: ['-f', 'qcow2', '-o', 'cluster_size=4k', 'x.qcow2', '100T'], exact: true },
      // qemu 7.2 prints a second line ("Detected format of qcow2."); one line is our policy: compare the first.
      {
        id: 'backing-without-format',
        args: ['-f', 'qcow2', '-b', 'base.qcow2', 'x.qcow2'],
        exact: false,
        mentions: ['qcowkit: x.qcow2: Backing file specified without backing format'],
        setup: (dir) => img(['create', '-q', '-f', 'qcow2', 'base.qcow2', '1M'], dir),
      },
      // qemu: "Could not open 'sub/missing.qcow2': No such file or directory" + "Could not open backing image."
      {
        id: 'missing-backing',
        args: ['-f', 'qcow2', '-b', 'missing.qcow2', '-F', 'qcow2', 'sub/x.qcow2', '1M'],
        exact: false,
        mentions: ['qcowkit: sub/x.qcow2: ', 'missing.qcow2', 'No such file or directory'],
        setup: (dir) => mkdirSync(join(dir, 'sub'), { recursive: true }),
      },
      // qemu's messages name QAPI fields ('version', 'compression-type'): ours name the -o option and the value.
      q('compat-2.0', 'compat=2.0', false, { mentions: ['compat', "'2.0'"] }),
      q('compression-lzo', 'compression_type=lzo', false, { mentions: ['compression', "'lzo'"] }),
      q('preallocation-bogus', 'preallocation=bogus', false, { mentions: ['preallocation', "'bogus'"] }),
      // qemu prints its cvtnum message on two lines; ours is its first line and the second, joined.
      { id: 'size-1Q', args: ['-f', 'qcow2', 'x.qcow2', '1Q'], exact: false, mentions: [BAD_SIZE] },
      { id: 'size-1e3', args: ['-f', 'raw', 'x.raw', '1e3'], exact: false, mentions: [BAD_SIZE] },
      { id: 'size-fraction-of-a-byte', args: ['-f', 'raw', 'x.raw', '1.5'], exact: false, mentions: [BAD_SIZE] },
      { id: 'size-8E', args: ['-f', 'raw', 'x.raw', '8E'], exact: false, mentions: ['size'] },
    ];
    /** Both runs of every case, for the cross-case checks below. */
    const runs = new Map<string, { c: ErrorCase; ours: Run; theirs: Run; before: string[]; oursAfter: string[]; theirsAfter: string[] }>();
    const runCase = (c: ErrorCase) => {
      let r = runs.get(c.id);
      if (r) return r;
      const { ours, theirs } = dirs(`error-${c.id}`);
      c.setup?.(ours);
      c.setup?.(theirs);
      const before = listFiles(ours);
      const theirRun = qemu(['create', ...c.args], theirs);
      const ourRun = qcowkit(['create', ...c.args], ours);
      r = { c, ours: ourRun, theirs: theirRun, before, oursAfter: listFiles(ours), theirsAfter: listFiles(theirs) };
      runs.set(c.id, r);
      return r;
    };
    /** The message without "qcowkit: " and the "FILE: " qemu puts before it (checked separately below). */
    const message = (stderr: string, file: string): string => stderr.replace(/^qcowkit: /gm, '').replace(new RegExp(`^${file.replace(/\./g, '\\.')}: `, 'gm'), '');
    const imageOf = (c: ErrorCase): string => c.args[c.args.length - 1]!.match(/^\d/) ? c.args[c.args.length - 2]! : c.args[c.args.length - 1]!;

    for (const c of cases) {
      it(`${c.id}: ${c.args.join(' ')}`, () => {
        const { ours, theirs } = runCase(c);
        expect(theirs.status, `qemu-img create ${c.args.join(' ')} should fail`).toBe(1);
        expect(ours.status, ours.stdout + ours.stderr).toBe(1);
        if (c.exact) {
          // The Formatting line (qemu prints it before validating most options), then the same message.
          expect(ours.stdout).toBe(theirs.stdout);
          expect(message(ours.stderr, imageOf(c))).toBe(message(asOurs(theirs.stderr), imageOf(c)));
        } else {
          expect(ours.stderr.trimEnd().split('\n'), ours.stderr).toHaveLength(1);
          for (const text of c.mentions ?? []) expect(ours.stderr).toContain(text);
        }
      });
    }

    it('error lines name the image first, like qemu-img ("qcowkit: FILE: message")', () => {
      const wrong: string[] = [];
      for (const c of cases.filter((e) => e.exact)) {
        const { ours, theirs } = runCase(c);
        if (!theirs.stderr.startsWith(`qemu-img: ${imageOf(c)}: `)) continue;
        if (!ours.stderr.startsWith(`qcowkit: ${imageOf(c)}: `)) wrong.push(`${c.id}: ${ours.stderr.trimEnd()}`);
      }
      expect(wrong.join('\n')).toBe('');
    });

    it('refused options leave no file behind (qemu-img validates before creating anything)', () => {
      const leftovers: string[] = [];
      for (const c of cases) {
        const r = runCase(c);
        expect(r.theirsAfter, c.id).toEqual(r.before);
        if (r.ours.status !== 0 && r.oursAfter.join() !== r.before.join()) leftovers.push(`${c.id}: ${r.oursAfter.filter((f) => !r.before.includes(f)).join(', ')}`);
      }
      expect(leftovers.join('\n')).toBe('');
    });
  });
});
