/**
 * convert through pipes: `convert … -` writes the image to standard output in one forward pass (the output is a
 * real pipe here, which cannot seek, so any seek would fail the command), and `convert -f raw - …` reads a raw
 * disk from standard input. qemu-img cannot do either; what comes out must still pass `qemu-img check` (no
 * leaks, no corruption) and `qemu-img compare` with the source.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { qemuIo, requireQemuImg, type QemuCheckResult, type QemuImgInfo } from '../../../../fixtures/corpus.js';
import { CLI_MAIN, qcowkit, qemu } from '../test-support/run-cli.js';

requireQemuImg();

let work: string;
beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), 'qcowkit-pipeline-pipe-'));
  // A 100 MiB disk with data that compresses, data that does not, a zero-written range and a short tail cluster.
  expect(qemu(['create', '-q', '-f', 'qcow2', 'src.qcow2', '100M'], work).status).toBe(0);
  expect(qemuIo(['-c', 'write -P 7 0 1M', '-c', 'write -P 8 10M 3M', '-c', 'write -z 20M 1M', '-c', 'write -P 9 99M 512k', 'src.qcow2'], { cwd: work }).status).toBe(0);
  const noise = Buffer.alloc(2 * 1024 * 1024);
  let x = 12345;
  for (let i = 0; i < noise.length; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    noise[i] = x >>> 24;
  }
  writeFileSync(join(work, 'noise.bin'), noise);
  expect(qemuIo(['-c', 'write -P 1 40M 64k', 'src.qcow2'], { cwd: work }).status).toBe(0);
  // Incompressible clusters at 50 MiB, from a raw file converted in with -n (qemu-io cannot write a file's bytes).
  expect(qemu(['create', '-q', '-f', 'raw', 'noise.raw', '100M'], work).status).toBe(0);
  const raw = Buffer.alloc(100 * 1024 * 1024);
  raw.set(noise, 50 * 1024 * 1024);
  writeFileSync(join(work, 'noise.raw'), raw);
  expect(qemu(['convert', '-f', 'raw', '-O', 'qcow2', 'noise.raw', 'noise.qcow2'], work).status).toBe(0);
});
afterAll(() => rmSync(work, { recursive: true, force: true }));

/** Runs `qcowkit ARGS | cat > OUT` in bash with pipefail: stdout is a pipe, as in a real pipeline. */
function piped(args: string[], out: string, input?: Buffer): { status: number; stderr: string } {
  const quoted = args.map((a) => `'${a}'`).join(' ');
  const r = spawnSync('bash', ['-c', `set -o pipefail; '${process.execPath}' '${CLI_MAIN}' ${quoted} | cat > '${out}'`], {
    cwd: work,
    encoding: 'utf8',
    ...(input === undefined ? {} : { input }),
    maxBuffer: 64 * 1024 * 1024,
  });
  return { status: r.status ?? -1, stderr: r.stderr };
}

function check(file: string): QemuCheckResult {
  const r = qemu(['check', '--output=json', file], work);
  return JSON.parse(r.stdout) as QemuCheckResult;
}

function expectClean(file: string): QemuCheckResult {
  const c = check(file);
  expect(c.corruptions ?? 0, `${file}: corruptions`).toBe(0);
  expect(c.leaks ?? 0, `${file}: leaks`).toBe(0);
  expect(c['check-errors'] ?? 0).toBe(0);
  return c;
}

describe('convert … - writes the image to a pipe', () => {
  const variants: Array<[string, string[]]> = [
    ['default options', []],
    ['-c', ['-c']],
    ['-c, zstd', ['-c', '-o', 'compression_type=zstd']],
    ['512-byte clusters, 64-bit refcounts (many refcount blocks)', ['-o', 'cluster_size=512,refcount_bits=64']],
    ['-c with 1-bit refcounts (a cluster holds one stream at most)', ['-c', '-o', 'refcount_bits=1']],
    ['2 MiB clusters, -c', ['-c', '-o', 'cluster_size=2M']],
    ['extended L2', ['-o', 'extended_l2=on']],
    ['compat=0.10', ['-o', 'compat=0.10']],
  ];
  for (const source of ['src.qcow2', 'noise.qcow2']) {
    for (const [name, args] of variants) {
      it(`${source}, ${name}: passes qemu-img check and compare`, () => {
        const out = join(work, `piped-${source}-${name.replace(/\W+/g, '_')}.qcow2`);
        const r = piped(['convert', '-O', 'qcow2', ...args, source, '-'], out);
        expect(r.status, r.stderr).toBe(0);
        expect(r.stderr).toBe('');
        const c = expectClean(out);
        if (args.includes('-c')) expect(c['compressed-clusters'] ?? 0).toBeGreaterThan(source === 'src.qcow2' ? 0 : -1);
        expect(qemu(['compare', source, out], work).stdout).toBe('Images are identical.\n');
        const info = JSON.parse(qemu(['info', '--output=json', out], work).stdout) as QemuImgInfo;
        expect(info['virtual-size']).toBe(100 * 1024 * 1024);
      });
    }
  }

  it('allocates what qemu-img convert allocates to a file (same clusters, same compressed count)', () => {
    for (const c of [[], ['-c']]) {
      const ours = join(work, `alloc-ours${c.length}.qcow2`);
      expect(piped(['convert', '-O', 'qcow2', ...c, 'src.qcow2', '-'], ours).status).toBe(0);
      expect(qemu(['convert', '-O', 'qcow2', ...c, 'src.qcow2', `alloc-theirs${c.length}.qcow2`], work).status).toBe(0);
      const a = check(ours);
      const b = check(`alloc-theirs${c.length}.qcow2`);
      expect(a['allocated-clusters']).toBe(b['allocated-clusters']);
      expect(a['compressed-clusters'] ?? 0).toBe(b['compressed-clusters'] ?? 0);
    }
  });

  it('-O raw - writes every guest byte (zeros included) in order', () => {
    const out = join(work, 'piped.raw');
    expect(piped(['convert', '-O', 'raw', 'src.qcow2', '-'], out).status).toBe(0);
    expect(statSync(out).size).toBe(100 * 1024 * 1024);
    expect(qemu(['compare', '-f', 'qcow2', '-F', 'raw', 'src.qcow2', out], work).stdout).toBe('Images are identical.\n');
  });

  it('an internal snapshot (-l) and a backing chain come out as one standalone image', () => {
    expect(qemu(['snapshot', '-c', 'before', 'src.qcow2'], work).status).toBe(0);
    expect(qemu(['create', '-q', '-f', 'qcow2', '-b', 'src.qcow2', '-F', 'qcow2', 'over.qcow2'], work).status).toBe(0);
    expect(qemuIo(['-c', 'write -P 3 5M 1M', 'over.qcow2'], { cwd: work }).status).toBe(0);
    const out = join(work, 'chain.qcow2');
    expect(piped(['convert', '-O', 'qcow2', 'over.qcow2', '-'], out).status).toBe(0);
    expectClean(out);
    expect(qemu(['compare', 'over.qcow2', out], work).status).toBe(0);
    const info = JSON.parse(qemu(['info', '--output=json', out], work).stdout) as QemuImgInfo;
    expect(info['backing-filename']).toBeUndefined();
    const snap = join(work, 'snap.qcow2');
    expect(piped(['convert', '-l', 'before', '-O', 'qcow2', 'src.qcow2', '-'], snap).status).toBe(0);
    expectClean(snap);
    expect(qemu(['compare', snap, 'src.qcow2'], work).status).toBe(0);
  });

  it('-p goes to stderr when stdout carries the image; --progress=json too', () => {
    const out = join(work, 'progress.qcow2');
    const r = piped(['convert', '-p', '-O', 'qcow2', 'src.qcow2', '-'], out);
    expect(r.status).toBe(0);
    expect(r.stderr).toMatch(/\(100\.00\/100%\)\r\n$/);
    expectClean(out);
    const j = piped(['convert', '--progress=json', '-c', '-O', 'qcow2', 'src.qcow2', '-'], out);
    expect(j.status).toBe(0);
    const last = JSON.parse(j.stderr.trim().split('\n').at(-1)!) as { status: string; percent: number };
    expect(last).toMatchObject({ status: 'done', percent: 100 });
    expectClean(out);
  });

  it('refuses what a pipe cannot be: -n, a backing file, preallocation, a data file', () => {
    for (const [args, text] of [
      [['-n'], '-n cannot be used'],
      [['-B', 'src.qcow2', '-F', 'qcow2'], 'backing file'],
      [['-o', 'preallocation=metadata'], 'preallocation'],
      [['-o', 'data_file=x.data'], 'external data file'],
    ] as const) {
      const r = qcowkit(['convert', '-O', 'qcow2', ...args, 'src.qcow2', '-'], work);
      expect(r.status).toBe(1);
      expect(r.stderr).toContain(text);
      expect(r.stdout).toBe('');
    }
  });
});

describe('convert -f raw - … reads a raw disk from standard input', () => {
  function run(args: string[], input: Buffer): { status: number; stdout: Buffer; stderr: string } {
    const r = spawnSync(process.execPath, [CLI_MAIN, ...args], { cwd: work, input, maxBuffer: 256 * 1024 * 1024 });
    return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr.toString() };
  }

  it('into qcow2: the virtual size is the bytes read (rounded up to a sector), the contents those bytes', () => {
    const input = readFileSync(join(work, 'noise.raw')).subarray(0, 60 * 1024 * 1024 + 1000);
    const r = run(['convert', '-f', 'raw', '-', '-O', 'qcow2', 'stdin.qcow2'], input);
    expect(r.status, r.stderr).toBe(0);
    expectClean('stdin.qcow2');
    const info = JSON.parse(qemu(['info', '--output=json', 'stdin.qcow2'], work).stdout) as QemuImgInfo;
    expect(info['virtual-size']).toBe(60 * 1024 * 1024 + 1024);
    writeFileSync(join(work, 'expected.raw'), Buffer.concat([input, Buffer.alloc(24)]));
    expect(qemu(['compare', '-f', 'raw', 'expected.raw', 'stdin.qcow2'], work).stdout).toBe('Images are identical.\n');
    // Zero runs of the input stay unallocated, as converting the file would leave them.
    expect(check('stdin.qcow2')['allocated-clusters']).toBeLessThanOrEqual(40);
  });

  it('from a pipe to a pipe, compressed', () => {
    const input = readFileSync(join(work, 'noise.raw'));
    const out = join(work, 'through.qcow2');
    const r = piped(['convert', '-f', 'raw', '-', '-c', '-O', 'qcow2', '-'], out, input);
    expect(r.status, r.stderr).toBe(0);
    expectClean(out);
    expect(qemu(['compare', '-f', 'raw', 'noise.raw', out], work).stdout).toBe('Images are identical.\n');
  });

  it('is never probed: bytes that look like a qcow2 header are copied as raw data', () => {
    const input = readFileSync(join(work, 'src.qcow2')).subarray(0, 3 * 65536);
    const r = run(['convert', '-f', 'raw', '-', '-O', 'raw', '-'], input);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout.length).toBe(input.length);
    expect(r.stdout.equals(input)).toBe(true);
  });

  it('hostile and odd inputs: empty, one byte, a sector and one byte; each gives a valid image', () => {
    for (const length of [0, 1, 513]) {
      const input = Buffer.alloc(length, 0xab);
      const r = run(['convert', '-f', 'raw', '-', '-O', 'qcow2', `odd-${length}.qcow2`], input);
      expect(r.status, r.stderr).toBe(0);
      expectClean(`odd-${length}.qcow2`);
      const info = JSON.parse(qemu(['info', '--output=json', `odd-${length}.qcow2`], work).stdout) as QemuImgInfo;
      expect(info['virtual-size']).toBe(Math.ceil(length / 512) * 512);
      const back = run(['convert', '-O', 'raw', `odd-${length}.qcow2`, '-'], Buffer.alloc(0));
      expect(back.stdout.subarray(0, length).equals(input)).toBe(true);
      expect(back.stdout.subarray(length).every((b) => b === 0)).toBe(true);
    }
  });

  it('needs -f raw, and must be the only source (one typed line, no stack trace)', () => {
    for (const args of [['convert', '-', '-O', 'qcow2', 'x.qcow2'], ['convert', '-f', 'qcow2', '-', '-O', 'qcow2', 'x.qcow2'], ['convert', '-f', 'raw', '-', 'src.qcow2', '-O', 'qcow2', 'x.qcow2']]) {
      const r = run(args, Buffer.alloc(512));
      expect(r.status).toBe(1);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).toMatch(/^qcowkit: /);
    }
  });

  it('a broken source image to a pipe: one typed line and nothing on stdout (pass 1 fails before any output)', () => {
    writeFileSync(join(work, 'garbage.qcow2'), Buffer.alloc(8192, 0x5a));
    const r = run(['convert', '-f', 'qcow2', '-O', 'qcow2', 'garbage.qcow2', '-'], Buffer.alloc(0));
    expect(r.status).toBe(1);
    expect(r.stdout.length).toBe(0);
    expect(r.stderr).toMatch(/^qcowkit: garbage\.qcow2: .*\n$/);
  });
});
