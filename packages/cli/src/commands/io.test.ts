/**
 * `qcowkit io` against `qemu-io`: the same command list run on two copies of one image must leave images that
 * `qemu-img compare` calls identical, with `qemu-img check` clean on ours, the same exit status, and the same output
 * (but for the timing lines). Image variants: v3 default, compat=0.10, extended_l2=on, 512-byte clusters with 1-bit
 * refcounts, zstd, each alone and over a backing file.
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hasQemuImg, hasQemuIo, isCI, qemuImg, qemuIo, requireQemuImg } from '../../../../fixtures/corpus.js';

requireQemuImg();
// qemu-io ships with qemu-img (Debian qemu-utils): on CI its absence is a setup error too.
if (isCI() && !hasQemuIo()) throw new Error('qemu-io is not available but CI is set: install qemu-utils');

const cli = fileURLToPath(new URL('../../dist/main.js', import.meta.url));

interface Run {
  stdout: string;
  stderr: string;
  status: number;
}

function qcowkitIo(commands: string[], file: string, cwd: string, extra: string[] = []): Run {
  const args = ['io', ...extra, ...commands.flatMap((c) => ['-c', c]), file];
  const r = spawnSync(process.execPath, [cli, ...args], { cwd, encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
  if (r.error) throw r.error;
  return { stdout: r.stdout, stderr: r.stderr, status: r.status ?? -1 };
}

function theirIo(commands: string[], file: string, cwd: string, extra: string[] = []): Run {
  const r = qemuIo([...extra, ...commands.flatMap((c) => ['-c', c]), file], { cwd });
  return { stdout: r.stdout, stderr: r.stderr, status: r.status };
}

/** Drops qemu-io's timing lines ("64 KiB, 1 ops; 00.00 sec (… ops/sec)", "0:00:01.59 (…" past a second). */
function withoutTimings(text: string): string {
  return text
    .split('\n')
    .filter((line) => !/, \d+ ops; (\d\d\.\d\d sec|\d+:\d\d:\d\d\.\d\d) \(.* ops\/sec\)$/.test(line))
    .join('\n');
}

interface Variant {
  id: string;
  /** qemu-img create -o for the image (and the backing file, when there is one). */
  options: string;
  backing: boolean;
}

const BASE_VARIANTS = [
  { id: 'v3', options: 'compat=1.1' },
  { id: 'compat=0.10', options: 'compat=0.10' },
  { id: 'extended_l2=on', options: 'extended_l2=on' },
  { id: 'cluster_size=512,refcount_bits=1', options: 'cluster_size=512,refcount_bits=1' },
  { id: 'zstd', options: 'compression_type=zstd' },
];
const VARIANTS: Variant[] = BASE_VARIANTS.flatMap((v) => [
  { ...v, backing: false },
  { ...v, id: `${v.id} over a backing file`, backing: true },
]);

const SIZE = 4 * 2 ** 20;

/** Command lists; all offsets of compressed writes are 64 KiB aligned (whole clusters for every variant). */
const SEQUENCES: Record<string, string[]> = {
  'unaligned pattern writes': [
    'write -P 0x11 1000 70000',
    'write -P 0x22 65535 3',
    'write -P 0x23 511 2',
    'write -P 0x24 131071 65538',
    'read -P 0x11 1000 64535',
    'read -P 0x22 65535 3',
    'write -P 0x25 4193792 512',
    'write -P 0x26 3000000 777777',
    'write -P 0x27 3000001 1',
    'read -P 0x25 4193792 512',
    'read -P 0x27 3000001 1',
    'flush',
    'write -P 0x28 2097151 2',
  ],
  'zero writes': [
    'write -P 0x31 0 1M',
    'write -z 300000 100000',
    'write -z -u 0 65536',
    'write -z 524288 65536',
    'write -z -u 600000 5000',
    'read -P 0 300000 100000',
    'read -P 0 0 65536',
    'write -z 2M 1M',
    'write -z -u 3M 512k',
    'write -P 0x32 3200000 1000',
    'write -z -u 1048576 1048576',
    'read -P 0 1048576 1048576',
    'flush',
    'read -P 0x31 65536 65536',
  ],
  discards: [
    'write -P 0x41 0 2M',
    'discard 131072 65536',
    'discard 1000 3000',
    'discard 262144 100000',
    'discard 1M 1M',
    'write -P 0x42 1100000 5000',
    'discard 3M 1M',
    'flush',
    'read -P 0x41 0 1000',
  ],
  'compressed writes': [
    'write -c -P 0x51 0 131072',
    'write -c -P 0x52 1M 64k',
    'write -P 0x53 70000 1000',
    'write -z 100000 20000',
    'discard 65536 65536',
    'write -c -P 0x54 196608 65536',
    'write -z -u 196608 65536',
    'write -c -P 0x55 262144 65536',
    'discard 262144 4096',
    'read -P 0x51 0 65536',
    'write -c -P 0x56 4128768 65536',
    'flush',
    'read -P 0x56 4128768 65536',
    'write -P 0x57 1050000 100',
    'read -P 0x52 1M 1000',
  ],
  'everything, flushed in between': [
    'write -P 0x61 12345 54321',
    'flush',
    'write -z 500000 3000000',
    'write -P 0x62 3500001 77777',
    'flush',
    'discard 1000 300000',
    // 3840k is not touched before (qemu-io refuses compressed writes onto allocated clusters: see the test below).
    'write -c -P 0x63 3840k 64k',
    'write -z -u 3840k 4096',
    'flush',
    'write -P 0x64 3932000 2000',
    'read -P 0x64 3932000 2000',
    'read -P 0 600000 100000',
  ],
};

describe.runIf(hasQemuImg() && hasQemuIo())('qcowkit io equals qemu-io', { timeout: 120_000 }, () => {
  const work = mkdtempSync(join(tmpdir(), 'qcowkit-io-cli-'));
  afterAll(() => rmSync(work, { recursive: true, force: true }));
  beforeAll(() => {
    expect(existsSync(cli), `${cli} is missing: build first (npx tsc -b packages/qcow2 packages/cli, or npm test)`).toBe(true);
  });

  const img = (args: string[], cwd: string): void => {
    const r = qemuImg(args, { cwd });
    expect(r.status, `qemu-img ${args.join(' ')}: ${r.stderr}`).toBe(0);
  };

  let counter = 0;
  /**
   * Makes two identical directories, ours/ and theirs/, each with img.qcow2 (and base.qcow2 under it when the
   * variant has a backing file: patterns, a zero cluster, and a hole, so reads through to it show).
   */
  function prepare(v: Variant): { ours: string; theirs: string } {
    const dir = join(work, `case-${++counter}`);
    const ours = join(dir, 'ours');
    const theirs = join(dir, 'theirs');
    mkdirSync(ours, { recursive: true });
    mkdirSync(theirs, { recursive: true });
    if (v.backing) {
      img(['create', '-q', '-f', 'qcow2', '-o', v.options, 'base.qcow2', String(SIZE)], ours);
      const fill = theirIo(['write -P 0x5a 0 3M', 'write -z 64k 64k', 'write -P 0x5b 3500000 100000'], 'base.qcow2', ours);
      expect(fill.status, fill.stdout + fill.stderr).toBe(0);
      img(['create', '-q', '-f', 'qcow2', '-o', v.options, '-b', 'base.qcow2', '-F', 'qcow2', 'img.qcow2', String(SIZE)], ours);
      copyFileSync(join(ours, 'base.qcow2'), join(theirs, 'base.qcow2'));
    } else {
      img(['create', '-q', '-f', 'qcow2', '-o', v.options, 'img.qcow2', String(SIZE)], ours);
    }
    copyFileSync(join(ours, 'img.qcow2'), join(theirs, 'img.qcow2'));
    return { ours, theirs };
  }

  /** Runs `commands` with both tools and compares output, status, resulting images; check must be clean on ours. */
  function expectSameIo(v: Variant, commands: string[]): Run {
    const { ours, theirs } = prepare(v);
    const theirRun = theirIo(commands, 'img.qcow2', theirs);
    const ourRun = qcowkitIo(commands, 'img.qcow2', ours);
    expect(withoutTimings(ourRun.stdout)).toBe(withoutTimings(theirRun.stdout));
    expect(ourRun.stderr).toBe(theirRun.stderr);
    expect(ourRun.status).toBe(theirRun.status);

    const compare = qemuImg(['compare', '-f', 'qcow2', '-F', 'qcow2', join(theirs, 'img.qcow2'), join(ours, 'img.qcow2')], { cwd: work });
    expect(compare.status, `qemu-img compare: ${compare.stdout}${compare.stderr}`).toBe(0);
    // Also with the backing file cut off: the overlays themselves must hold the same data.
    if (v.backing) {
      const alone = (dir: string): string => `json:${JSON.stringify({ driver: 'qcow2', file: { driver: 'file', filename: join(dir, 'img.qcow2') }, backing: null })}`;
      const c = qemuImg(['compare', alone(theirs), alone(ours)], { cwd: work });
      expect(c.status, `qemu-img compare without the backing files: ${c.stdout}${c.stderr}`).toBe(0);
      // The backing file is never written.
      const base = qemuImg(['compare', '-f', 'qcow2', '-F', 'qcow2', join(theirs, 'base.qcow2'), join(ours, 'base.qcow2')], { cwd: work });
      expect(base.status).toBe(0);
    }
    const check = qemuImg(['check', 'img.qcow2'], { cwd: ours });
    expect(check.status, `qemu-img check: ${check.stdout}${check.stderr}`).toBe(0);
    expect(check.stdout).toContain('No errors were found on the image.');
    return ourRun;
  }

  for (const v of VARIANTS) {
    describe(v.id, () => {
      for (const [name, commands] of Object.entries(SEQUENCES)) {
        it(name, () => {
          const r = expectSameIo(v, commands);
          // Every read -P in the scripts holds: a failed verification would also have failed qemu-io.
          expect(r.stdout).not.toContain('Pattern verification failed');
          expect(r.status).toBe(0);
        });
      }
    });
  }

  describe('qemu-io messages and exit status', () => {
    const v3: Variant = { id: 'v3', options: 'compat=1.1', backing: false };

    it('read -P mismatch: "Pattern verification failed at offset N, L bytes", exit 1, later commands still run', () => {
      const r = expectSameIo(v3, ['write -P 0x11 0 4096', 'read -P 0x11 0 4096', 'read -P 0x12 1024 512', 'write -P 0x13 8192 512', 'read -P 0 4096 1000']);
      expect(r.status).toBe(1);
      expect(r.stdout).toContain('Pattern verification failed at offset 1024, 512 bytes\n');
      expect(r.stdout).toContain('wrote 512/512 bytes at offset 8192\n');
    });

    it('"1M1" is not a number: qemu-io\'s parsing error line, exit 1, the other commands still run', () => {
      const { ours, theirs } = prepare(v3);
      const commands = ['write -P 0x11 0 1M1', 'read 1M1 512', 'write -P 0x22 0 512'];
      const theirRun = theirIo(commands, 'img.qcow2', theirs);
      const ourRun = qcowkitIo(commands, 'img.qcow2', ours);
      const line = (n: string): string => `Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- ${n}`;
      expect(theirRun.stdout + theirRun.stderr).toContain(line('1M1'));
      expect(ourRun.status).toBe(theirRun.status);
      expect(ourRun.status).toBe(1);
      expect((ourRun.stdout + ourRun.stderr).split('\n').filter((l) => l.startsWith('Parsing error'))).toEqual([line('1M1'), line('1M1')]);
      expect(ourRun.stdout).toContain('wrote 512/512 bytes at offset 0\n');
      expect(qemuImg(['compare', join(theirs, 'img.qcow2'), join(ours, 'img.qcow2')]).status).toBe(0);
    });

    it('the parsing error line goes to stdout, like qemu-io', () => {
      const { ours, theirs } = prepare(v3);
      const theirRun = theirIo(['read 0 1M1'], 'img.qcow2', theirs);
      const ourRun = qcowkitIo(['read 0 1M1'], 'img.qcow2', ours);
      expect(ourRun.stdout).toBe(theirRun.stdout);
      expect(ourRun.stderr).toBe(theirRun.stderr);
    });

    // Command lines that qemu-io refuses or accepts in its own way: same output, same exit status, same image.
    const cases: Array<[string, string[]]> = [
      ['out of range read, write, discard', ['read 0 5M', 'write 4M 1', 'write 4194303 2', 'discard 4M 512', 'read 4M 0']],
      ['zero-length operations', ['read 0 0', 'write 0 0', 'discard 0 0', 'write -z 0 0']],
      ['hex and suffixed numbers', ['write -P 0x7f 0x10 0x20', 'read -P 127 16 32', 'read -P 0 1k 1K', 'write -P 1 1m 2k', 'read -P 1 1048576 2048']],
      ['fractional numbers with a suffix, and the b suffix', ['write -P 5 1.5k 1', 'read -P 5 1536 1', 'read -P 0 1b 1']],
      ['numbers too large', ['read -P 0 9E 5', 'read -P 0 0 100000000000000000000']],
      ['other unparsable numbers', ['read -P 0 1e3 5', 'write 12x 5']],
      ['pattern bytes out of range', ['write -P 256 0 1', 'write -P 0x100 0 512', 'write -P 1x 0 512', 'write -P 255 0 1']],
      ['a pattern glued to -P', ['write -P0xab 0 512', 'read -P0xab 0 512']],
      ['-u without -z', ['write -u 0 512']],
      ['unaligned compressed write, then more commands', ['write -c 0 1000', 'write -P 9 0 512', 'read -P 9 0 512']],
      ['wrong argument counts', ['read 0', 'flush extra', 'write -P 1 0 512']],
      ['length over qemu-io\'s limit', ['read 0 1T']],
      ['unknown command', ['bogus 1 2', 'write -P 2 0 1']],
      ['quiet and verbose flags', ['write -q -P 0x41 0 32', 'read -q 0 32', 'read -v 0 32', 'discard -q 0 512']],
    ];
    for (const [name, commands] of cases) {
      it(`${name}: ${commands.join(' / ')}`, () => {
        const { ours, theirs } = prepare(v3);
        const theirRun = theirIo(commands, 'img.qcow2', theirs);
        const ourRun = qcowkitIo(commands, 'img.qcow2', ours);
        expect(withoutTimings(ourRun.stdout + ourRun.stderr)).toBe(withoutTimings(theirRun.stdout + theirRun.stderr));
        expect(ourRun.status).toBe(theirRun.status);
        expect(qemuImg(['compare', join(theirs, 'img.qcow2'), join(ours, 'img.qcow2')]).status).toBe(0);
        expect(qemuImg(['check', join(ours, 'img.qcow2')]).status).toBe(0);
      });
    }

    it('write -c onto an allocated cluster: qemu-io fails with an I/O error and leaves the data', () => {
      for (const v of [v3, { id: 'v2', options: 'compat=0.10', backing: false }]) {
        const r = expectSameIo(v, ['write -P 0x71 0 128k', 'write -c -P 0x72 64k 64k', 'read -P 0x71 0 128k']);
        expect(r.stdout).toContain('write failed: Input/output error\n');
      }
    });
  });
});
