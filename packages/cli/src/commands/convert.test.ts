/**
 * `qcowkit convert` against `qemu-img convert`: for every source (raw with mixed content, a qcow2 image, a three-level
 * chain, internal snapshots, compressed images) and every output option set, the output must pass `qemu-img check`
 * with no leaks, `qemu-img compare` as identical to the source and to qemu-img's own output, stand alone (no backing
 * file), be no more than 5% larger than qemu-img's, and come out byte-identical when converted twice.
 */
import { closeSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, openSync, readSync, rmSync, statSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  copyImage,
  corpusDir,
  findImage,
  generatedDir,
  hasCorpus,
  hasQemuImg,
  hasQemuIo,
  qemuImg,
  qemuIo,
  requireQemuImg,
  type QemuCheckResult,
  type QemuImgInfo,
} from '../../../../fixtures/corpus.js';
import { CLI_MAIN, qcowkit, qemu } from '../test-support/run-cli.js';

requireQemuImg();




/** Byte equality of two files, read in chunks (like cmp). */
function firstDifference(a: string, b: string): number {
  const ba = Buffer.alloc(1 << 20);
  const bb = Buffer.alloc(1 << 20);
  const fa = openSync(a, 'r');
  const fb = openSync(b, 'r');
  try {
    for (let at = 0; ; at += ba.length) {
      const n = readSync(fa, ba, 0, ba.length, at);
      const m = readSync(fb, bb, 0, bb.length, at);
      if (!ba.subarray(0, n).equals(bb.subarray(0, m))) {
        for (let i = 0; i < Math.min(n, m); i++) if (ba[i] !== bb[i]) return at + i;
        return at + Math.min(n, m);
      }
      if (n === 0) return -1;
    }
  } finally {
    closeSync(fa);
    closeSync(fb);
  }
}

/** xorshift32: the same "random" bytes on every run, so the conversions are reproducible. */
function pseudoRandom(length: number, seed: number): Buffer {
  const out = Buffer.alloc(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = x & 0xff;
  }
  return out;
}

/** A source image and the snapshot (-l) to convert, if any. */
interface Source {
  id: string;
  path: string;
  /** `-l` argument for qemu-img (and us). */
  snapshot?: string;
}

/** One output option set: arguments after `-O qcow2`. */
interface OptionSet {
  id: string;
  args: string[];
}

const OPTION_SETS: OptionSet[] = [
  { id: 'default', args: [] },
  { id: '-c', args: ['-c'] },
  { id: '-c zstd', args: ['-c', '-o', 'compression_type=zstd'] },
  { id: 'cluster_size=4k', args: ['-o', 'cluster_size=4k'] },
  { id: 'cluster_size=2M', args: ['-o', 'cluster_size=2M'] },
  { id: 'extended_l2=on', args: ['-o', 'extended_l2=on'] },
  { id: 'compat=0.10', args: ['-o', 'compat=0.10'] },
  { id: 'refcount_bits=1', args: ['-o', 'refcount_bits=1'] },
];

/** Rows of the size table printed at the end: file size (st_size) and blocks on disk (st_blocks * 512). */
interface SizeRow {
  source: string;
  options: string;
  ours: number;
  theirs: number;
  oursOnDisk: number;
  theirsOnDisk: number;
}

describe.runIf(hasQemuImg())('qcowkit convert equals qemu-img convert', { timeout: 300_000 }, () => {
  const work = mkdtempSync(join(tmpdir(), 'qcowkit-convert-cli-'));
  const src = join(work, 'src');
  const out = join(work, 'out');
  const sizes: SizeRow[] = [];
  const sources: Source[] = [];

  afterAll(() => {
    rmSync(work, { recursive: true, force: true });
    if (sizes.length === 0) return;
    const pct = (r: SizeRow): string => `${(((r.ours - r.theirs) / r.theirs) * 100).toFixed(1)}%`;
    const lines = sizes.map((r) => `| ${r.source} | ${r.options} | ${r.ours} | ${r.theirs} | ${pct(r)} | ${r.oursOnDisk} | ${r.theirsOnDisk} |`);
    console.log(['convert -O qcow2 output sizes (bytes): qcowkit vs qemu-img', '| source | options | qcowkit | qemu-img | diff | qcowkit on disk | qemu-img on disk |', '|---|---|---|---|---|---|---|', ...lines].join('\n'));
  });

  const img = (args: string[], cwd = src): void => {
    const r = qemuImg(args, { cwd });
    expect(r.status, `qemu-img ${args.join(' ')}: ${r.stderr}`).toBe(0);
  };

  beforeAll(() => {
    expect(existsSync(CLI_MAIN), `${CLI_MAIN} is missing: build first (npx tsc -b packages/qcow2 packages/cli, or npm test)`).toBe(true);
    mkdirSync(src, { recursive: true });
    mkdirSync(out, { recursive: true });

    // 1. Raw, 8 MiB + 1.5 KiB (the last cluster is partial): random data, zeros written out, holes, a repeated byte,
    //    single sectors, runs that straddle cluster boundaries.
    const raw = join(src, 'mixed.raw');
    const size = 8 * 2 ** 20 + 3 * 512;
    const fd = openSync(raw, 'w');
    try {
      const put = (offset: number, data: Buffer): void => {
        writeSync(fd, data, 0, data.length, offset);
      };
      put(0, pseudoRandom(70_000, 1));
      put(200_000, Buffer.alloc(65536)); // zeros written out: must not be stored
      put(2 ** 20 - 512, pseudoRandom(3 * 65536 + 1024, 2));
      put(2 * 2 ** 20, Buffer.alloc(2 ** 20));
      put(4 * 2 ** 20, pseudoRandom(4096, 3));
      put(4 * 2 ** 20 + 65536, pseudoRandom(513, 4));
      put(5 * 2 ** 20 + 12345, Buffer.alloc(54321, 0xab));
      put(6 * 2 ** 20, Buffer.from('x'.repeat(300_000)));
      put(7 * 2 ** 20 + 4096 * 3, pseudoRandom(512, 5));
      put(size - 1000, pseudoRandom(1000, 6));
    } finally {
      closeSync(fd);
    }
    sources.push({ id: 'mixed.raw', path: raw });

    // 2. A qcow2 image written by qemu-io: data, zero clusters (allocated and not), a discard, a compressed cluster.
    img(['create', '-q', '-f', 'qcow2', 'written.qcow2', '16M']);
    if (hasQemuIo()) {
      const cmds = [
        'write -P 0x11 0 1M',
        'write -P 0x22 1000000 300000',
        'write -z 256k 256k',
        'write -z -u 512k 64k',
        'discard 768k 128k',
        'write -c -P 0x33 4M 128k',
        'write -P 0x44 16775000 1000',
        'write -z 8M 1M',
      ];
      const r = qemuIo(cmds.flatMap((c) => ['-c', c]).concat('written.qcow2'), { cwd: src });
      expect(r.status, r.stdout + r.stderr).toBe(0);
    } else {
      img(['convert', '-O', 'qcow2', 'mixed.raw', 'written.qcow2']);
    }
    sources.push({ id: 'written.qcow2', path: join(src, 'written.qcow2') });

    // 3. The corpus chain: base.raw <- mid.qcow2 (4k) <- top.qcow2 (16k), relative names.
    sources.push({ id: 'chain/top.qcow2', path: copyImage(corpusDir(), findImage(corpusDir(), 'chain/top.qcow2'), src) });
    // A short backing file (reads as zeros past its end).
    sources.push({ id: 'short-overlay.qcow2', path: copyImage(corpusDir(), findImage(corpusDir(), 'short-overlay.qcow2'), src) });

    // 4. Internal snapshots (s1, s2, s4, one deleted): the active layer and each snapshot.
    const snapshots = copyImage(corpusDir(), findImage(corpusDir(), 'snapshots.qcow2'), src);
    sources.push({ id: 'snapshots.qcow2', path: snapshots });
    sources.push({ id: 'snapshots.qcow2 -l snapshot.name=s1', path: snapshots, snapshot: 'snapshot.name=s1' });
    sources.push({ id: 'snapshots.qcow2 -l s2', path: snapshots, snapshot: 's2' });
    sources.push({ id: 'snapshots.qcow2 -l snapshot.id=4', path: snapshots, snapshot: 'snapshot.id=4' });

    // 5. Compressed sources: zlib (64k), zstd (4k), zlib with 512-byte clusters, and zstd with 2M clusters (large set).
    for (const name of ['zlib.qcow2', 'zstd.qcow2', 'zlib-c512.qcow2', 'extl2.qcow2']) {
      sources.push({ id: name, path: copyImage(corpusDir(), findImage(corpusDir(), name), src) });
    }
    if (hasCorpus(generatedDir())) {
      sources.push({ id: 'c2m-zstd.qcow2', path: copyImage(generatedDir(), findImage(generatedDir(), 'c2m-zstd.qcow2'), src) });
    }
  });

  let counter = 0;
  const outputs = (tag: string): { a: string; b: string; q: string } => {
    const n = ++counter;
    return { a: join(out, `${n}-${tag}-ours.out`), b: join(out, `${n}-${tag}-ours-again.out`), q: join(out, `${n}-${tag}-qemu.out`) };
  };
  const snapshotArgs = (s: Source): string[] => (s.snapshot === undefined ? [] : ['-l', s.snapshot]);

  function expectGoodQcow2Conversion(s: Source, o: OptionSet): void {
    const files = outputs('qcow2');
    const args = ['convert', ...snapshotArgs(s), '-O', 'qcow2', ...o.args];
    const theirs = qemu([...args, s.path, files.q], work);
    expect(theirs.status, `qemu-img ${args.join(' ')}: ${theirs.stderr}`).toBe(0);
    const ours = qcowkit([...args, s.path, files.a], work);
    expect(ours.stderr, `qcowkit ${args.join(' ')}`).toBe('');
    expect(ours.status).toBe(0);
    expect(ours.stdout).toBe(theirs.stdout);

    // qemu-img check: clean, no leaks.
    const check = qemu(['check', '--output=json', files.a], work);
    expect(check.status, `qemu-img check: ${check.stdout}${check.stderr}`).toBe(0);
    const result = JSON.parse(check.stdout) as QemuCheckResult;
    expect(result['check-errors']).toBe(0);
    expect(result.leaks ?? 0).toBe(0);
    expect(result.corruptions ?? 0).toBe(0);

    // The same disk as the source (the snapshot, for -l: compared through qemu-img's conversion) and as qemu's output.
    if (s.snapshot === undefined) {
      const same = qemu(['compare', s.path, files.a], work);
      expect(same.status, `qemu-img compare ${s.id} ours: ${same.stdout}${same.stderr}`).toBe(0);
    }
    const sameAsQemu = qemu(['compare', '-f', 'qcow2', '-F', 'qcow2', files.q, files.a], work);
    expect(sameAsQemu.status, `qemu-img compare qemu's ours: ${sameAsQemu.stdout}${sameAsQemu.stderr}`).toBe(0);
    expect(sameAsQemu.stdout).toBe('Images are identical.\n');

    // Standalone, with the options asked for (qemu-img info equal to that of qemu's output, but for names and sizes).
    const info = (file: string): QemuImgInfo => {
      const r = qemu(['info', '--output=json', file], work);
      expect(r.status, r.stderr).toBe(0);
      const parsed = JSON.parse(r.stdout) as QemuImgInfo;
      delete parsed['actual-size'];
      delete (parsed as Partial<QemuImgInfo>).filename;
      return parsed;
    };
    const ourInfo = info(files.a);
    expect(ourInfo['backing-filename']).toBeUndefined();
    expect(ourInfo['full-backing-filename']).toBeUndefined();
    expect(ourInfo).toEqual(info(files.q));

    // Not more than 5% larger than qemu-img's output.
    const oursStat = statSync(files.a);
    const theirsStat = statSync(files.q);
    sizes.push({ source: s.id, options: o.id, ours: oursStat.size, theirs: theirsStat.size, oursOnDisk: oursStat.blocks * 512, theirsOnDisk: theirsStat.blocks * 512 });
    expect(oursStat.size, `output of ${o.id} from ${s.id}: ${oursStat.size} bytes, qemu-img's ${theirsStat.size}`).toBeLessThanOrEqual(theirsStat.size * 1.05);

    // Deterministic: the same input and options give the same bytes.
    const again = qcowkit([...args, s.path, files.b], work);
    expect(again.status, again.stderr).toBe(0);
    expect(firstDifference(files.a, files.b), 'second conversion differs at byte').toBe(-1);
    for (const f of [files.a, files.b, files.q]) rmSync(f, { force: true });
  }

  const sourceIds = (): string[] => sources.map((s) => s.id);
  // Sources are made in beforeAll; the test list is known up front.
  const SOURCE_IDS = [
    'mixed.raw',
    'written.qcow2',
    'chain/top.qcow2',
    'short-overlay.qcow2',
    'snapshots.qcow2',
    'snapshots.qcow2 -l snapshot.name=s1',
    'snapshots.qcow2 -l s2',
    'snapshots.qcow2 -l snapshot.id=4',
    'zlib.qcow2',
    'zstd.qcow2',
    'zlib-c512.qcow2',
    'extl2.qcow2',
    'c2m-zstd.qcow2',
  ];
  const source = (id: string): Source | undefined => sources.find((s) => s.id === id);

  for (const id of SOURCE_IDS) {
    describe(`from ${id}`, () => {
      for (const o of OPTION_SETS) {
        it(`-O qcow2 ${o.id}`, (ctx) => {
          const s = source(id);
          if (!s) {
            // Only the large-corpus image may be missing (no fixtures/generated); anything else is a setup bug.
            expect(id, `source ${id} was not prepared (have: ${sourceIds().join(', ')})`).toBe('c2m-zstd.qcow2');
            ctx.skip();
            return;
          }
          expectGoodQcow2Conversion(s, o);
        });
      }

      it('-O raw equals qemu-img convert -O raw byte for byte', (ctx) => {
        const s = source(id);
        if (!s) {
          expect(id).toBe('c2m-zstd.qcow2');
          ctx.skip();
          return;
        }
        const files = outputs('raw');
        const args = ['convert', ...snapshotArgs(s), '-O', 'raw'];
        const theirs = qemu([...args, s.path, files.q], work);
        expect(theirs.status, theirs.stderr).toBe(0);
        const ours = qcowkit([...args, s.path, files.a], work);
        expect(ours.status, ours.stderr).toBe(0);
        expect(ours.stdout).toBe(theirs.stdout);
        expect(statSync(files.a).size).toBe(statSync(files.q).size);
        expect(firstDifference(files.a, files.q), 'raw output differs from qemu-img at byte').toBe(-1);
        // Holes where qemu-img leaves holes (-S 4k by default): not much more on disk than qemu's file.
        expect(statSync(files.a).blocks).toBeLessThanOrEqual(statSync(files.q).blocks * 1.05 + 8);
        rmSync(files.a);
        rmSync(files.q);
      });
    });
  }

  describe('snapshots', () => {
    it('-s NAME converts the same disk as qemu-img -l snapshot.name=NAME (qemu-img 7.2 no longer has -s)', () => {
      const s = source('snapshots.qcow2')!;
      for (const [ours, theirs] of [
        [['-s', 's1'], ['-l', 'snapshot.name=s1']],
        [['-s', '2'], ['-l', 'snapshot.id=2']],
      ] as const) {
        const files = outputs('s');
        expect(qemu(['convert', ...theirs, '-O', 'qcow2', s.path, files.q], work).status).toBe(0);
        const r = qcowkit(['convert', ...ours, '-O', 'qcow2', s.path, files.a], work);
        expect(r.status, r.stderr).toBe(0);
        expect(firstDifference(files.a, files.q) === -1 || qemu(['compare', files.q, files.a], work).status === 0).toBe(true);
      }
    });

    it('the snapshots differ from each other and from the active layer (the -l tests compare something)', () => {
      const s = source('snapshots.qcow2')!;
      const raws = ['snapshot.name=s1', 'snapshot.name=s2', 'snapshot.name=s4', undefined].map((l) => {
        const f = outputs('snapraw').q;
        expect(qemu(['convert', ...(l ? ['-l', l] : []), '-O', 'raw', s.path, f], work).status).toBe(0);
        return f;
      });
      for (let i = 0; i < raws.length; i++) for (let j = i + 1; j < raws.length; j++) expect(firstDifference(raws[i]!, raws[j]!), `${i} vs ${j}`).not.toBe(-1);
    });

    it('an unknown snapshot fails like qemu-img, and creates no output', () => {
      const s = source('snapshots.qcow2')!;
      const files = outputs('nosnap');
      const theirs = qemu(['convert', '-l', 'snapshot.name=nope', '-O', 'qcow2', s.path, files.q], work);
      const ours = qcowkit(['convert', '-l', 'snapshot.name=nope', '-O', 'qcow2', s.path, files.a], work);
      expect(theirs.status).toBe(1);
      expect(ours.status).toBe(1);
      expect(ours.stderr).toContain("Failed to load snapshot: Can't find snapshot");
      expect(existsSync(files.q)).toBe(false);
      expect(existsSync(files.a)).toBe(false);
    });
  });

  describe('compression', () => {
    it('-c really compresses: qemu-img check counts compressed clusters, zstd output says compression type zstd', () => {
      const s = source('mixed.raw')!;
      for (const [o, type] of [[['-c'], 'zlib'], [['-c', '-o', 'compression_type=zstd'], 'zstd']] as const) {
        const files = outputs('c');
        const r = qcowkit(['convert', '-O', 'qcow2', ...o, s.path, files.a], work);
        expect(r.status, r.stderr).toBe(0);
        const check = JSON.parse(qemu(['check', '--output=json', files.a], work).stdout) as QemuCheckResult;
        expect(check['compressed-clusters'] ?? 0).toBeGreaterThan(0);
        const info = JSON.parse(qemu(['info', '--output=json', files.a], work).stdout) as QemuImgInfo;
        expect(info['format-specific']?.data['compression-type']).toBe(type);
      }
    });

    it('the partial last cluster is compressed too, as qemu-img does', () => {
      const s = source('mixed.raw')!;
      const files = outputs('tail');
      expect(qcowkit(['convert', '-O', 'qcow2', '-c', s.path, files.a], work).status).toBe(0);
      expect(qemu(['convert', '-O', 'qcow2', '-c', s.path, files.q], work).status).toBe(0);
      const count = (f: string): number | undefined => (JSON.parse(qemu(['check', '--output=json', f], work).stdout) as QemuCheckResult)['compressed-clusters'];
      expect(count(files.a)).toBe(count(files.q));
    });
  });

  describe('progress', () => {
    it('-p prints "    (NN.NN/100%)\\r" updates that only go up, ending at 100% and a newline', () => {
      const s = source('mixed.raw')!;
      const files = outputs('p');
      const ours = qcowkit(['convert', '-p', '-O', 'qcow2', s.path, files.a], work);
      expect(ours.status, ours.stderr).toBe(0);
      expect(ours.stdout).toMatch(/^( {4}\(\d{1,3}\.\d\d\/100%\)\r)+\n$/);
      const values = [...ours.stdout.matchAll(/\((\d+\.\d\d)\/100%\)/g)].map((m) => Number(m[1]));
      expect(values.length).toBeGreaterThanOrEqual(2);
      for (let i = 1; i < values.length; i++) expect(values[i]!).toBeGreaterThanOrEqual(values[i - 1]!);
      expect(values[values.length - 1]).toBe(100);
      // Without -p, and with -p -q, nothing.
      expect(qcowkit(['convert', '-O', 'qcow2', s.path, files.b], work).stdout).toBe('');
      expect(qcowkit(['convert', '-p', '-q', '-O', 'raw', s.path, files.b], work).stdout).toBe('');
    });

    it('-p starts at 0.00%, like qemu-img', () => {
      const s = source('mixed.raw')!;
      const files = outputs('p0');
      const theirs = qemu(['convert', '-p', '-O', 'qcow2', s.path, files.q], work);
      expect(theirs.stdout.startsWith('    (0.00/100%)\r')).toBe(true);
      const ours = qcowkit(['convert', '-p', '-O', 'qcow2', s.path, files.a], work);
      expect(ours.stdout.startsWith('    (0.00/100%)\r'), JSON.stringify(ours.stdout.slice(0, 40))).toBe(true);
    });

    it('-p with -O raw and -c prints progress too', () => {
      const s = source('chain/top.qcow2')!;
      for (const o of [['-O', 'raw'], ['-O', 'qcow2', '-c']]) {
        const files = outputs('pr');
        const ours = qcowkit(['convert', '-p', ...o, s.path, files.a], work);
        expect(ours.status, ours.stderr).toBe(0);
        expect(ours.stdout).toMatch(/^( {4}\(\d{1,3}\.\d\d\/100%\)\r)+\n$/);
        expect(ours.stdout).toContain('(100.00/100%)\r\n');
      }
    });
  });

  it('converting over an existing file replaces it completely (no stale data or length)', () => {
    const s = source('chain/top.qcow2')!;
    const files = outputs('over');
    copyFileSync(source('c2m-zstd.qcow2')?.path ?? source('mixed.raw')!.path, files.a);
    const big = statSync(files.a).size;
    expect(qcowkit(['convert', '-O', 'qcow2', s.path, files.a], work).status).toBe(0);
    expect(qemu(['convert', '-O', 'qcow2', s.path, files.q], work).status).toBe(0);
    expect(statSync(files.a).size).toBeLessThan(big);
    expect(firstDifference(files.a, files.q)).toBe(-1);
    expect(qemu(['check', files.a], work).status).toBe(0);
  });
});
