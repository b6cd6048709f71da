/**
 * convert -m (requests in flight) and -W (out-of-order writes), as qemu-img takes them: the same refusals, and
 * whatever the values, outputs that qemu-img finds identical to the source and clean; compressed outputs are
 * byte-identical from run to run and whatever -m (each cluster is compressed on its own, stored in guest order).
 */
import { readFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { qemuIo, requireQemuImg } from '../../../../fixtures/corpus.js';
import { qcowkit, qemu } from '../test-support/run-cli.js';

requireQemuImg();

let work: string;
beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), 'qcowkit-speed-convert-parallel-'));
  // 24 MiB raw: text-like data (compresses), bytes that do not, zero bytes over data, holes; runs of 64 KiB..3 MiB.
  expect(qemu(['create', '-q', '-f', 'raw', 'src.raw', '24M'], work).status).toBe(0);
  const text = Buffer.from(Array.from({ length: 40000 }, (_, i) => `line ${i} of the guest's log\n`).join(''));
  writeFileSync(join(work, 'text.bin'), text.subarray(0, 3 * 1024 * 1024));
  const commands = ['write -q -P 0x5a 1M 3M', 'write -q -z 2M 64k', 'write -q -P 0x17 9M 64k', 'write -q -P 0 12M 1M', 'write -q -P 0x99 20M 3M'];
  expect(qemuIo(['-f', 'raw', ...commands.flatMap((c) => ['-c', c]), 'src.raw'], { cwd: work }).status).toBe(0);
  const raw = readFileSync(join(work, 'src.raw'));
  raw.set(text.subarray(0, 2 * 1024 * 1024), 14 * 1024 * 1024);
  for (let i = 0; i < 1024 * 1024; i++) raw[5 * 1024 * 1024 + i] = (i * 2654435761) >>> 24; // does not compress
  writeFileSync(join(work, 'src.raw'), raw);
});
afterAll(() => rmSync(work, { recursive: true, force: true }));

function message(stderr: string, prefix: string): string {
  return stderr.trim().replace(prefix, '');
}

describe('convert -m and -W', () => {
  it('refuses what qemu-img refuses, with its message, and takes what it takes', () => {
    for (const m of ['0', '17', '3x', '08', '-1']) {
      const theirs = qemu(['convert', '-m', m, '-O', 'raw', 'src.raw', 'q.raw'], work);
      const ours = qcowkit(['convert', '-m', m, '-O', 'raw', 'src.raw', 'k.raw'], work);
      expect(theirs.status, `qemu-img -m ${m}`).toBe(1);
      expect(ours.status, `-m ${m}: ${ours.stderr}`).toBe(1);
      expect(message(ours.stderr, 'qcowkit: ')).toBe(message(theirs.stderr, 'qemu-img: '));
    }
    for (const m of ['1', '0x8', ' 8', '16']) expect(qcowkit(['convert', '-m', m, '-O', 'raw', 'src.raw', 'k.raw'], work).status, `-m ${m}`).toBe(0);
  });

  it('gives a clean image equal to the source whatever -m, in order or not', () => {
    for (const flags of [['-m', '1'], ['-m', '16'], ['-W'], ['-W', '-m', '3']]) {
      for (const format of ['qcow2', 'raw']) {
        const out = `p-${flags.join('')}.${format}`;
        const r = qcowkit(['convert', ...flags, '-f', 'raw', '-O', format, 'src.raw', out], work);
        expect(r.status, `${flags.join(' ')} -O ${format}: ${r.stderr}`).toBe(0);
        expect(qemu(['compare', '-f', 'raw', '-F', format, 'src.raw', out], work).status, `${flags.join(' ')} -O ${format}`).toBe(0);
        if (format === 'qcow2') expect(qemu(['check', out], work).status).toBe(0);
      }
    }
    // The zero bytes are left out as qemu-img leaves them out: same allocation whatever -m.
    // Guest ranges only: with -W the host order differs, so qemu-img map splits a guest run where host offsets jump.
    const allocated = (file: string): string => {
      type Extent = { start: number; length: number; offset?: number; [flag: string]: unknown };
      const merged: Extent[] = [];
      for (const { offset: _host, ...extent } of JSON.parse(qemu(['map', '--output=json', file], work).stdout) as Extent[]) {
        const last = merged.at(-1);
        const sameFlags = last !== undefined && ['depth', 'present', 'zero', 'data'].every((k) => last[k] === extent[k]);
        if (last && sameFlags && last.start + last.length === extent.start) last.length += extent.length;
        else merged.push(extent);
      }
      return JSON.stringify(merged);
    };
    expect(qcowkit(['convert', '-O', 'qcow2', 'src.raw', 'default.qcow2'], work).status).toBe(0);
    expect(qemu(['convert', '-O', 'qcow2', 'src.raw', 'qemu.qcow2'], work).status).toBe(0);
    expect(allocated('p--m1.qcow2')).toBe(allocated('qemu.qcow2'));
    expect(allocated('p--W.qcow2')).toBe(allocated('qemu.qcow2'));
    // In order, the host layout does not depend on -m either.
    expect(readFileSync(join(work, 'p--m16.qcow2')).equals(readFileSync(join(work, 'p--m1.qcow2')))).toBe(true);
  });

  it('writes compressed images byte for byte the same from run to run and whatever -m (zlib and zstd)', () => {
    for (const type of ['zlib', 'zstd']) {
      const outputs = [['-m', '1'], ['-m', '16'], []].map((flags, i) => {
        const out = `c-${type}-${i}.qcow2`;
        const r = qcowkit(['convert', '-c', ...flags, '-o', `compression_type=${type}`, '-f', 'raw', '-O', 'qcow2', 'src.raw', out], work);
        expect(r.status, r.stderr).toBe(0);
        expect(qemu(['compare', '-f', 'raw', '-F', 'qcow2', 'src.raw', out], work).status).toBe(0);
        expect(qemu(['check', out], work).status).toBe(0);
        return readFileSync(join(work, out));
      });
      expect(outputs[1]!.equals(outputs[0]!), `${type}: -m 16 against -m 1`).toBe(true);
      expect(outputs[2]!.equals(outputs[0]!), `${type}: default against -m 1`).toBe(true);
      const info = JSON.parse(qemu(['check', '--output=json', `c-${type}-0.qcow2`], work).stdout) as { 'compressed-clusters'?: number };
      expect(info['compressed-clusters'] ?? 0, `${type}: the text clusters are compressed`).toBeGreaterThan(10);
    }
  });
});
