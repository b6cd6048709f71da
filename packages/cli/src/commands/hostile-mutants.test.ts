import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { requireQemuImg } from '../../../../fixtures/corpus.js';
import { makeSeeds, type Seed } from '../test-support/hostile-mutations.js';
import { CLI_MAIN } from '../test-support/run-cli.js';

/**
 * qemu-made images damaged the ways issue 9 found (damaged zlib and zstd streams, header fields qemu refuses,
 * truncations, overlapping and garbage tables), through info, map, check and convert, judged against qemu-img on
 * the same file: one line on stderr (check's report aside), no stack trace, the process ends (a 60 s limit is
 * a hang, not a timing), a non-zero exit wherever qemu-img cannot open the image, and never exit 0 with other
 * data than qemu-img reads. The wide random sweep is scripts/hostile-sweep.ts.
 */
requireQemuImg();

const work = mkdtempSync(join(tmpdir(), 'qcowkit-hostile-mutants-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));
const seeds = new Map<string, Seed>(makeSeeds(work).map((s) => [s.name, s]));

interface Run {
  status: number;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}
function run(command: string, args: string[], shell = false): Run {
  const r = shell
    ? spawnSync('bash', ['-c', args.join(' ')], { cwd: work, encoding: 'utf8', timeout: 60_000, maxBuffer: 256 * 1024 * 1024 })
    : spawnSync(command, args, { cwd: work, encoding: 'utf8', timeout: 60_000, maxBuffer: 256 * 1024 * 1024 });
  return { status: r.status ?? -1, stdout: r.stdout ?? '', stderr: r.stderr ?? '', timedOut: r.signal !== null };
}
const ours = (args: string[]): Run => run(process.execPath, [CLI_MAIN, ...args]);
const lines = (text: string): string[] => (text.trim() === '' ? [] : text.trim().split('\n'));

/** A seed's bytes with a view, and where its structures are. */
function damage(seedName: string, change: (bytes: Uint8Array, view: DataView, at: Structures) => Uint8Array | void): Uint8Array {
  const bytes = seeds.get(seedName)!.bytes.slice();
  const view = new DataView(bytes.buffer);
  const clusterBits = view.getUint32(20);
  const l1 = Number(view.getBigUint64(40));
  const l2 = Number(view.getBigUint64(l1) & 0x00fffffffffffe00n);
  let compressed = 0;
  for (let off = l2; off < l2 + 2 ** clusterBits; off += 8) {
    const entry = view.getBigUint64(off);
    if ((entry & (1n << 62n)) !== 0n) {
      compressed = Number(entry & ((1n << BigInt(62 - (clusterBits - 8))) - 1n));
      break;
    }
  }
  return change(bytes, view, { l1, l2, compressed, refcountTable: Number(view.getBigUint64(48)), clusterSize: 2 ** clusterBits }) ?? bytes;
}
interface Structures {
  l1: number;
  l2: number;
  compressed: number;
  refcountTable: number;
  clusterSize: number;
}

const cases: Array<[name: string, bytes: () => Uint8Array]> = [
  ['zlib stream damaged', () => damage('zlib.qcow2', (b, _v, s) => void b.fill(0xff, s.compressed, s.compressed + 8))],
  ['zlib stream that decompresses to nothing', () => damage('zlib.qcow2', (b, _v, s) => void b.set([0x01, 0x00, 0x00, 0xff, 0xff], s.compressed))],
  ['zlib stream cut short', () => damage('zlib.qcow2', (b, _v, s) => void b.fill(0, s.compressed + 20, s.compressed + 400))],
  ['zstd frame with a bad magic', () => damage('zstd.qcow2', (b, _v, s) => void b.fill(0xff, s.compressed, s.compressed + 4))],
  ['zstd frame with a garbage block', () => damage('zstd.qcow2', (b, _v, s) => void b.fill(0xa5, s.compressed + 6, s.compressed + 40))],
  ['refcount_table_clusters = 0', () => damage('zlib.qcow2', (_b, v) => v.setUint32(56, 0))],
  ['data-file-raw without a data file', () => damage('zlib.qcow2', (_b, v) => v.setBigUint64(88, 2n))],
  ['header_length 108 (extensions read from other bytes)', () => damage('zlib.qcow2', (_b, v) => v.setUint32(100, 108))],
  ['header_length 100', () => damage('zlib.qcow2', (_b, v) => v.setUint32(100, 100))],
  ['header_length beyond the cluster', () => damage('c512.qcow2', (_b, v) => v.setUint32(100, 520))],
  ['snapshots_offset not cluster aligned', () => damage('zlib.qcow2', (_b, v) => v.setBigUint64(64, v.getBigUint64(64) + 8n))],
  ['snapshots_offset at the header', () => damage('zlib.qcow2', (_b, v) => v.setBigUint64(64, 0n))],
  ['l1_size huge', () => damage('zlib.qcow2', (_b, v) => v.setUint32(36, 0x3ffffff))],
  ['refcount table entry pointing at the L1 table', () => damage('zlib.qcow2', (_b, v, s) => v.setBigUint64(s.refcountTable, BigInt(s.l1)))],
  ['every L1 entry at one L2 table', () => damage('c512.qcow2', (_b, v, s) => { for (let i = 0; i < 32; i++) v.setBigUint64(s.l1 + i * 8, BigInt(s.l2) | (1n << 63n)); })],
  ['garbage L2 table', () => damage('zlib.qcow2', (b, _v, s) => { let x = 12345; for (let i = 0; i < s.clusterSize; i++) { x = (x * 1103515245 + 12345) >>> 0; b[s.l2 + i] = x >>> 24; } })],
  ['L1 entry at the header', () => damage('zlib.qcow2', (_b, v, s) => v.setBigUint64(s.l1, 1n << 63n))],
  ['compressed entry with a huge sector count', () => damage('zlib.qcow2', (_b, v, s) => { for (let off = s.l2; off < s.l2 + s.clusterSize; off += 8) if ((v.getBigUint64(off) & (1n << 62n)) !== 0n) v.setBigUint64(off, v.getBigUint64(off) | (0xffn << 54n)); })],
  ['truncated inside the header extensions', () => seeds.get('zlib.qcow2')!.bytes.subarray(0, 300)],
  ['truncated inside the L1 table', () => damage('zlib.qcow2', (b, _v, s) => b.subarray(0, s.l1 + 4))],
  ['truncated inside an L2 table', () => damage('zlib.qcow2', (b, _v, s) => b.subarray(0, s.l2 + 100))],
  ['truncated inside a compressed stream', () => damage('zstd.qcow2', (b, _v, s) => b.subarray(0, s.compressed + 10))],
];

describe('hostile images: one line, no stack trace, never exit 0 with other data than qemu-img', () => {
  it.each(cases.map(([name, bytes], i) => ({ name, bytes, i })))('$name', ({ bytes, i }) => {
    const file = `case${i}.qcow2`;
    writeFileSync(join(work, file), bytes());
    const qemuInfo = run('qemu-img', ['info', '-f', 'qcow2', file]);
    const qemuConvert = run('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', file, `q${i}.raw`]);
    const qemuCheck = run('qemu-img', ['check', '-f', 'qcow2', file]);
    for (const args of [['info'], ['map', '--output=json'], ['convert', '-O', 'raw'], ['check']]) {
      const r = ours([...args, '-f', 'qcow2', file, ...(args[0] === 'convert' ? [`k${i}.raw`] : [])]);
      const what = `qcowkit ${args[0]}: exit ${r.status}, stderr: ${r.stderr.slice(0, 400)}`;
      expect(r.timedOut, what).toBe(false);
      expect(r.stderr, what).not.toMatch(/\n\s+at /);
      expect(r.stderr, what).not.toMatch(/(TypeError|RangeError|ReferenceError|unhandled)/i);
      if (r.status !== 0 && args[0] !== 'check') {
        expect(lines(r.stderr), what).toHaveLength(1);
        expect(r.stderr, what).toMatch(new RegExp(`^qcowkit: ${file.replace('.', '\\.')}: `));
      }
      // A check that cannot complete prints what it found, as qemu-img does, then one 'qcowkit:' line.
      if (r.status === 1 && args[0] === 'check') expect(lines(r.stderr).at(-1), what).toMatch(/^qcowkit: /);
      // Where qemu-img cannot open the image, neither does qcowkit.
      if (qemuInfo.status !== 0 && args[0] !== 'check') expect(r.status, `${what}; qemu-img: ${qemuInfo.stderr}`).not.toBe(0);
      if (args[0] === 'convert' && r.status === 0) {
        expect(qemuConvert.status, `qcowkit converted what qemu-img could not: ${qemuConvert.stderr}`).toBe(0);
        expect(readFileSync(join(work, `k${i}.raw`)).equals(readFileSync(join(work, `q${i}.raw`))), 'qcowkit read other data than qemu-img').toBe(true);
      }
      if (args[0] === 'check') {
        // qemu-img's report is the guide for how much a check of a damaged image prints.
        expect(lines(r.stdout).length + lines(r.stderr).length, what).toBeLessThanOrEqual((lines(qemuCheck.stdout).length + lines(qemuCheck.stderr).length) * 2 + 20);
        if (qemuCheck.status === 1 && /Could not open/.test(qemuCheck.stderr)) expect(r.status, what).toBe(1);
      }
    }
  });

  it('a zstd decoder that cannot start (address-space limit) is an error, never zeros', () => {
    const file = 'zstd-limited.qcow2';
    writeFileSync(join(work, file), seeds.get('zstd.qcow2')!.bytes);
    run('qemu-img', ['convert', '-O', 'raw', file, 'zstd-limited.raw']);
    const limited = (args: string): Run => run('bash', [`ulimit -v 4194304; exec ${process.execPath} ${CLI_MAIN} ${args}`], true);
    const convert = limited(`convert -O raw ${file} out-limited.raw`);
    expect(convert.status).toBe(1);
    expect(lines(convert.stderr)).toHaveLength(1);
    expect(convert.stderr).toContain('cannot load the zstd decoder');
    const compare = limited(`compare ${file} zstd-limited.raw`);
    // qemu-img compare's exit for an error: 2, never 0 ("identical").
    expect(compare.status).toBe(2);
    expect(lines(compare.stderr)).toHaveLength(1);
  });
});
