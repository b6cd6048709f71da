/**
 * convert's copy flags against qemu-img 7.2 on the same files: --target-is-zero and -n, -S, -r, --salvage, and the
 * progress stream for programs (--progress=json). Refusals must print qemu-img's message and exit 1 like it.
 */
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { qemuIo, requireQemuImg, type QemuCheckResult } from '../../../../fixtures/corpus.js';
import { qcowkit, qemu } from '../test-support/run-cli.js';

requireQemuImg();

let work: string;
beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), 'qcowkit-pipeline-convert-flags-'));
  // A 64 MiB source: data at 1 MiB and 8 MiB, a zero-written range, the rest unallocated.
  expect(qemu(['create', '-q', '-f', 'qcow2', 'src.qcow2', '64M'], work).status).toBe(0);
  expect(qemuIo(['-c', 'write -P 0x11 1M 1M', '-c', 'write -P 0x22 8M 192k', '-c', 'write -z 16M 1M', 'src.qcow2'], { cwd: work }).status).toBe(0);
});
afterAll(() => rmSync(work, { recursive: true, force: true }));

/** qemu-img's message with its "qemu-img: " prefix removed, and ours with "qcowkit: ", lines joined. */
function message(stderr: string, prefix: string): string {
  return stderr
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => (l.startsWith(prefix) ? l.slice(prefix.length) : l))
    .join(' ');
}

function check(file: string): QemuCheckResult {
  return JSON.parse(qemu(['check', '--output=json', file], work).stdout) as QemuCheckResult;
}

/** A compressed image whose second cluster's stream is overwritten with garbage. */
function damaged(): string {
  expect(qemu(['create', '-q', '-f', 'qcow2', 'plain.qcow2', '1M'], work).status).toBe(0);
  expect(qemuIo(['-c', 'write -P 7 0 1M', 'plain.qcow2'], { cwd: work }).status).toBe(0);
  expect(qemu(['convert', '-c', '-O', 'qcow2', 'plain.qcow2', 'broken.qcow2'], work).status).toBe(0);
  const fd = openSync(join(work, 'broken.qcow2'), 'r+');
  try {
    const header = Buffer.alloc(104);
    readExactly(fd, header, 0);
    const l1 = Number(header.readBigUInt64BE(40));
    const entry = Buffer.alloc(8);
    readExactly(fd, entry, l1);
    const l2 = Number(entry.readBigUInt64BE(0) & 0x00fffffffffffe00n);
    readExactly(fd, entry, l2 + 8);
    const x = 62 - (16 - 8);
    const stream = Number(entry.readBigUInt64BE(0) & ((1n << BigInt(x)) - 1n));
    writeSync(fd, Buffer.alloc(40, 0xff), 0, 40, stream);
  } finally {
    closeSync(fd);
  }
  return 'broken.qcow2';
}
function readExactly(fd: number, buffer: Buffer, at: number): void {
  expect(readSync(fd, buffer, 0, buffer.length, at)).toBe(buffer.length);
}

describe('refusals as qemu-img', () => {
  const cases: Array<[string, string[]]> = [
    ['--target-is-zero without -n', ['--target-is-zero', '-O', 'qcow2', 'src.qcow2', 'r1.qcow2']],
    ['--target-is-zero with -B but without -n', ['--target-is-zero', '-O', 'qcow2', '-B', 'src.qcow2', '-F', 'qcow2', 'src.qcow2', 'r8.qcow2']],
    ['-n with -o', ['-n', '-o', 'cluster_size=4k', '-O', 'qcow2', 'src.qcow2', 'blank.qcow2']],
    ['-S not a multiple of 512', ['-S', '1000', '-O', 'raw', 'src.qcow2', 'r2.raw']],
    ['-S above 16 MiB', ['-S', '32M', '-O', 'raw', 'src.qcow2', 'r3.raw']],
    ['-S not a number', ['-S', 'abc', '-O', 'raw', 'src.qcow2', 'r4.raw']],
    ['-r not a number', ['-r', 'abc', '-O', 'raw', 'src.qcow2', 'r5.raw']],
    ['-r negative', ['-r', '-5', '-O', 'raw', 'src.qcow2', 'r6.raw']],
    ['-r beyond 63 bits', ['-r', '10E', '-O', 'raw', 'src.qcow2', 'r7.raw']],
    ['-n into a smaller output', ['-n', '-O', 'qcow2', 'src.qcow2', 'small.qcow2']],
    // Creation options qemu parses but refuses when it creates the target: named with the output file.
    ['a cluster size qemu refuses', ['-o', 'cluster_size=3', '-O', 'qcow2', 'src.qcow2', 'r9.qcow2']],
    ['a refcount width qemu refuses', ['-o', 'refcount_bits=3', '-O', 'qcow2', 'src.qcow2', 'r10.qcow2']],
    ['a VHD subformat qemu refuses', ['-o', 'subformat=bogus', '-O', 'vpc', 'src.qcow2', 'r11.vhd']],
    ['an unknown creation option', ['-o', 'foo=1', '-O', 'qcow2', 'src.qcow2', 'r12.qcow2']],
    ['a disk larger than a VHD can address', ['-O', 'vpc', 'big.qcow2', 'r13.vhd']],
  ];
  beforeAll(() => {
    expect(qemu(['create', '-q', '-f', 'qcow2', 'blank.qcow2', '64M'], work).status).toBe(0);
    expect(qemu(['create', '-q', '-f', 'qcow2', 'small.qcow2', '1M'], work).status).toBe(0);
    expect(qemu(['create', '-q', '-f', 'qcow2', 'big.qcow2', '3T'], work).status).toBe(0);
  });
  it('-n --target-is-zero -B: qemu-img prints its refusal but exits 0 (a qemu bug); qcowkit prints the same and exits 1', () => {
    const args = ['convert', '-n', '--target-is-zero', '-B', 'src.qcow2', '-F', 'qcow2', '-O', 'qcow2', 'src.qcow2', 'blank.qcow2'];
    const theirs = qemu(args, work);
    const ours = qcowkit(args, work);
    expect(theirs.status).toBe(0);
    expect(ours.status).toBe(1);
    expect(message(ours.stderr, 'qcowkit: ')).toBe(message(theirs.stderr, 'qemu-img: '));
  });
  for (const [name, args] of cases) {
    it(name, () => {
      const theirs = qemu(['convert', ...args], work);
      const ours = qcowkit(['convert', ...args], work);
      expect(theirs.status).toBe(1);
      expect(ours.status).toBe(1);
      expect(message(ours.stderr, 'qcowkit: ')).toBe(message(theirs.stderr, 'qemu-img: '));
    });
  }
  it('a refused qcow2 creation leaves no output file, as qemu-img', () => {
    for (const tool of [qemu, qcowkit]) {
      expect(tool(['convert', '-o', 'cluster_size=3', '-O', 'qcow2', 'src.qcow2', 'left.qcow2'], work).status).toBe(1);
      expect(existsSync(join(work, 'left.qcow2'))).toBe(false);
    }
  });
});

describe('-n and --target-is-zero', () => {
  /** A 64 MiB qcow2 whose every byte is 0x99: what an existing target that is not blank looks like. */
  function fullTarget(name: string): string {
    expect(qemu(['create', '-q', '-f', 'qcow2', name, '64M'], work).status).toBe(0);
    expect(qemuIo(['-c', 'write -P 0x99 0 64M', name], { cwd: work }).status).toBe(0);
    return name;
  }

  it('-n into an image with data: the source is copied exactly, as qemu-img does (zeros written where the source reads zeros)', () => {
    for (const tool of ['ours', 'theirs'] as const) {
      const target = fullTarget(`n-${tool}.qcow2`);
      const r = tool === 'ours' ? qcowkit(['convert', '-n', '-O', 'qcow2', 'src.qcow2', target], work) : qemu(['convert', '-n', '-O', 'qcow2', 'src.qcow2', target], work);
      expect(r.status, r.stderr).toBe(0);
      expect(qemu(['compare', 'src.qcow2', target], work).status).toBe(0);
      const c = check(target);
      expect(c.corruptions ?? 0).toBe(0);
      expect(c.leaks ?? 0).toBe(0);
    }
  });

  it('-n into a raw file with data: exact copy, the file keeps its length', () => {
    const target = join(work, 'n.raw');
    const fd = openSync(target, 'w');
    writeSync(fd, Buffer.alloc(72 * 1024 * 1024, 0x77));
    closeSync(fd);
    expect(qcowkit(['convert', '-n', '-O', 'raw', 'src.qcow2', 'n.raw'], work).status).toBe(0);
    const bytes = readFileSync(target);
    expect(bytes.length).toBe(72 * 1024 * 1024);
    // The first 64 MiB are the source, the tail is untouched (qemu-img leaves it too).
    expect(qemu(['compare', '-f', 'qcow2', '-F', 'raw', 'src.qcow2', 'n.raw'], work).stdout).toContain('Image size mismatch');
    expect(bytes[64 * 1024 * 1024]).toBe(0x77);
    expect(bytes[0]).toBe(0);
    expect(bytes[1024 * 1024]).toBe(0x11);
  });

  it('--target-is-zero trusts the caller: zeros are not written, so a target that is not blank keeps its old bytes there, as with qemu-img', () => {
    const ours = fullTarget('tz-ours.qcow2');
    const theirs = fullTarget('tz-theirs.qcow2');
    expect(qcowkit(['convert', '-n', '--target-is-zero', '-O', 'qcow2', 'src.qcow2', ours], work).status).toBe(0);
    expect(qemu(['convert', '-n', '--target-is-zero', '-O', 'qcow2', 'src.qcow2', theirs], work).status).toBe(0);
    expect(qemu(['compare', 'src.qcow2', ours], work).status).toBe(1);
    expect(qemu(['compare', ours, theirs], work).status).toBe(0);
  });

  it('--target-is-zero into a blank target gives the source', () => {
    expect(qemu(['create', '-q', '-f', 'qcow2', 'tzb.qcow2', '64M'], work).status).toBe(0);
    expect(qcowkit(['convert', '-n', '--target-is-zero', '-O', 'qcow2', 'src.qcow2', 'tzb.qcow2'], work).status).toBe(0);
    expect(qemu(['compare', 'src.qcow2', 'tzb.qcow2'], work).status).toBe(0);
  });
});

describe('-S', () => {
  it('allocates what qemu-img allocates: -S 0 fully allocated, -S 128k also the zero clusters between data', () => {
    for (const s of ['0', '128k', '4k']) {
      expect(qcowkit(['convert', '-S', s, '-O', 'qcow2', 'src.qcow2', `s-${s}-ours.qcow2`], work).status).toBe(0);
      expect(qemu(['convert', '-S', s, '-O', 'qcow2', 'src.qcow2', `s-${s}-theirs.qcow2`], work).status).toBe(0);
      const ours = check(`s-${s}-ours.qcow2`);
      expect(ours['allocated-clusters'], `-S ${s}`).toBe(check(`s-${s}-theirs.qcow2`)['allocated-clusters']);
      expect(ours.leaks ?? 0).toBe(0);
      expect(qemu(['compare', 'src.qcow2', `s-${s}-ours.qcow2`], work).status).toBe(0);
    }
  });

  it('-S 0 with -O raw writes every byte (no holes), like qemu-img', () => {
    expect(qcowkit(['convert', '-S', '0', '-O', 'raw', 'src.qcow2', 's0.raw'], work).status).toBe(0);
    const map = JSON.parse(qemu(['map', '--output=json', '-f', 'raw', 's0.raw'], work).stdout) as Array<{ data: boolean }>;
    expect(map.every((e) => e.data)).toBe(true);
    expect(qemu(['compare', 'src.qcow2', 's0.raw'], work).status).toBe(0);
  });
});

describe('-r', () => {
  it('accepts what qemu-img accepts (0 = no limit, fractions with a suffix, hex) and copies exactly', () => {
    for (const rate of ['0', '1.5G', '0x40000000']) {
      const r = qcowkit(['convert', '-r', rate, '-O', 'qcow2', 'src.qcow2', 'rate.qcow2'], work);
      expect(r.status, `${rate}: ${r.stderr}`).toBe(0);
      expect(qemu(['compare', 'src.qcow2', 'rate.qcow2'], work).status).toBe(0);
    }
  });
});

describe('--salvage', () => {
  it('without it the conversion fails (exit 1); with it, exit 0, one warning per unreadable sector as qemu-img, the same bytes out', () => {
    const source = damaged();
    expect(qemu(['convert', '-O', 'raw', source, 'x.raw'], work).status).toBe(1);
    const failed = qcowkit(['convert', '-O', 'raw', source, 'x.raw'], work);
    expect(failed.status).toBe(1);
    expect(failed.stderr.split('\n').filter((l) => l !== '')).toHaveLength(1);

    const theirs = qemu(['convert', '--salvage', '-O', 'raw', source, 'salvage-theirs.raw'], work);
    const ours = qcowkit(['convert', '--salvage', '-O', 'raw', source, 'salvage-ours.raw'], work);
    expect(theirs.status).toBe(0);
    expect(ours.status, ours.stderr).toBe(0);
    const strip = (s: string, p: string) => s.split('\n').filter((l) => l !== '').map((l) => l.replace(p, ''));
    expect(strip(ours.stderr, 'qcowkit: ')).toEqual(strip(theirs.stderr, 'qemu-img: '));
    expect(strip(ours.stderr, 'qcowkit: ')).toHaveLength(128);
    expect(readFileSync(join(work, 'salvage-ours.raw')).equals(readFileSync(join(work, 'salvage-theirs.raw')))).toBe(true);
    // -q silences the warnings, not the salvage.
    const quiet = qcowkit(['convert', '--salvage', '-q', '-O', 'qcow2', source, 'salvage-q.qcow2'], work);
    expect(quiet.status).toBe(0);
    expect(quiet.stderr).toBe('');
    expect(qemu(['compare', 'salvage-q.qcow2', 'salvage-theirs.raw'], work).status).toBe(0);
  });
});

describe('--progress=json', () => {
  interface Line {
    operation: string;
    status: string;
    done?: number;
    total?: number;
    percent?: number;
    error?: string;
  }
  const lines = (stderr: string): Line[] =>
    stderr
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Line);

  it('one JSON object per line on stderr, percent rising to a last "done" line at 100; stdout stays empty', () => {
    const r = qcowkit(['convert', '--progress=json', '-O', 'qcow2', 'src.qcow2', 'pj.qcow2'], work);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toBe('');
    const all = lines(r.stderr);
    expect(all.length).toBe(r.stderr.split('\n').filter((l) => l !== '').length);
    expect(all.length).toBeGreaterThanOrEqual(2);
    expect(all[0]).toEqual({ operation: 'convert', status: 'running', done: 0, total: 64 * 1024 * 1024, percent: 0 });
    for (let i = 1; i < all.length; i++) expect(all[i]!.percent!).toBeGreaterThanOrEqual(all[i - 1]!.percent!);
    expect(all[all.length - 1]).toEqual({ operation: 'convert', status: 'done', done: 64 * 1024 * 1024, total: 64 * 1024 * 1024, percent: 100 });
  });

  it('works with -q (a program asked for it), and compare/commit/rebase speak it too', () => {
    const r = qcowkit(['compare', '-q', '--progress=json', 'src.qcow2', 'pj.qcow2'], work);
    expect(r.status).toBe(0);
    expect(lines(r.stderr).at(-1)).toMatchObject({ operation: 'compare', status: 'done', percent: 100 });
  });

  it('a failing command ends the stream with a "failed" line, then the usual error line', () => {
    const r = qcowkit(['convert', '--progress=json', '-O', 'raw', damaged(), 'pf.raw'], work);
    expect(r.status).toBe(1);
    const all = lines(r.stderr);
    expect(all.at(-1)).toMatchObject({ operation: 'convert', status: 'failed' });
    expect(all.at(-1)!.error).toMatch(/decompress/);
    expect(r.stderr.trimEnd().split('\n').at(-1)).toMatch(/^qcowkit: broken\.qcow2: /);
  });

  it('an unknown format is refused before anything runs', () => {
    const r = qcowkit(['convert', '--progress=xml', '-O', 'raw', 'src.qcow2', 'px.raw'], work);
    expect(r.status).toBe(1);
    expect(r.stderr).toBe("qcowkit: Invalid progress format 'xml' (expected human or json)\n");
  });
});
