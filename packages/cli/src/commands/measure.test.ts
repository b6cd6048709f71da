import { closeSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { corpusDir, hasQemuImg, hasQemuIo, loadManifest, qemuImg, qemuIo, requireQemuImg } from '../../../../fixtures/corpus.js';
import { cvtnum, qemuStrtosz } from '../parse/qemu-size.js';
import { formatMeasureHuman, formatMeasureJson } from './measure.js';
import {  qcowkit, type Run } from '../test-support/run-cli.js';

requireQemuImg();

const withQemu = hasQemuImg() && hasQemuIo();


/**
 * `measure ARGS` with both tools: the same exit status and stdout byte for byte; on failure, our one-line
 * message ("qcowkit: [FILE: ]MESSAGE") starts with qemu-img's first line ("qemu-img: MESSAGE").
 */
function expectSameMeasure(args: string[], cwd: string): Run {
  const theirs = qemuImg(['measure', ...args], { cwd });
  const ours = qcowkit(['measure', ...args], cwd);
  const what = `measure ${args.join(' ')}`;
  expect(ours.stdout, `${what} (stderr: ${ours.stderr})`).toBe(theirs.stdout);
  expect(ours.status, `${what}: ${theirs.stderr} / ${ours.stderr}`).toBe(theirs.status);
  if (theirs.status !== 0) {
    const theirMessage = theirs.stderr.split('\n').find((line) => line.startsWith('qemu-img: ') && !line.startsWith('qemu-img: warning'))!.slice('qemu-img: '.length);
    const ourMessage = ours.stderr.trim().replace(/^qcowkit: /, '').replace(/^[^ ]+: (?=Failed to load snapshot)/, '');
    expect(ourMessage.startsWith(theirMessage), `${what}: "${ourMessage}" should start with "${theirMessage}"`).toBe(true);
  }
  return ours;
}

function bothOutputs(args: string[], cwd: string): void {
  expectSameMeasure(args, cwd);
  expectSameMeasure(['--output=json', ...args], cwd);
}

describe('qemu size syntax (qemu_strtosz, cvtnum)', () => {
  it('reads suffixes, fractions and hex as qemu does', () => {
    expect(qemuStrtosz('1')).toBe(1n);
    expect(qemuStrtosz('1b')).toBe(1n);
    expect(qemuStrtosz('1K')).toBe(1024n);
    expect(qemuStrtosz('1.5M')).toBe(1572864n);
    expect(qemuStrtosz('1.7k')).toBe(1741n); // 1740.8 rounds half up
    expect(qemuStrtosz('1.')).toBe(1n);
    expect(qemuStrtosz('012')).toBe(12n);
    expect(qemuStrtosz(' 1k')).toBe(1024n);
    expect(qemuStrtosz('0x100')).toBe(256n);
    expect(qemuStrtosz('1.3333k')).toBe(1365n);
    for (const bad of ['', '1.5', '.5k', '1e3', '1 k', '1kB', '-1', '0x1.5k', 'k']) expect(() => qemuStrtosz(bad), bad).toThrow('invalid');
    expect(() => qemuStrtosz('16E')).toThrow('range');
  });

  it("warns about hex with a suffix, and limits image sizes to int64", () => {
    const warnings: string[] = [];
    expect(qemuStrtosz('0x1k', (w) => warnings.push(w))).toBe(1024n);
    expect(warnings).toEqual(['Using a multiplier suffix on hex numbers is deprecated: 0x1k']);
    expect(cvtnum('image size', '9223372036854775807')).toBe((1n << 63n) - 1n);
    expect(() => cvtnum('image size', '8E')).toThrow('Invalid image size specified. Must be between 0 and 9223372036854775807.');
    expect(() => cvtnum('image size', '1x')).toThrow('Invalid image size specified. You may use k, M, G, T, P or E suffixes for');
  });

  it("prints qemu's human and JSON forms", () => {
    expect(formatMeasureHuman({ required: 1n, fullyAllocated: 2n })).toBe('required size: 1\nfully allocated size: 2\n');
    expect(formatMeasureHuman({ required: 1n, fullyAllocated: 2n, bitmaps: 0n })).toBe('required size: 1\nfully allocated size: 2\nbitmaps size: 0\n');
    expect(formatMeasureJson({ required: 1n, fullyAllocated: 2n, bitmaps: 3n })).toBe('{\n    "bitmaps": 3,\n    "required": 1,\n    "fully-allocated": 2\n}\n');
    expect(formatMeasureJson({ required: 1n << 63n, fullyAllocated: 1n << 63n })).toBe(
      '{\n    "required": -9223372036854775808,\n    "fully-allocated": -9223372036854775808\n}\n',
    );
  });
});

function writeAt(path: string, offset: number, data: Uint8Array): void {
  const fd = openSync(path, 'r+');
  try {
    writeSync(fd, data, 0, data.length, offset);
  } finally {
    closeSync(fd);
  }
}

function must(r: { status: number; stderr: string; stdout: string }, what: string): void {
  if (r.status !== 0 || /failed/i.test(r.stdout)) throw new Error(`${what}: ${r.stdout}${r.stderr}`);
}

describe.runIf(withQemu)('qcowkit measure against qemu-img measure', () => {
  let dir: string;

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'qcowkit-measure-cli-'));
    must(qemuImg(['create', '-q', '-f', 'raw', 'sparse.raw', '40M'], { cwd: dir }), 'create sparse.raw');
    writeAt(join(dir, 'sparse.raw'), 5000, new Uint8Array(3000).fill(0x5a));
    writeAt(join(dir, 'sparse.raw'), 10 * 1024 * 1024, new Uint8Array(2 * 1024 * 1024).fill(0x33));
    must(qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4k', 'disk.qcow2', '64M'], { cwd: dir }), 'create disk.qcow2');
    must(qemuIo(['-f', 'qcow2', '-c', 'write -P 1 0 1M', '-c', 'write -z 2M 2M', '-c', 'write -P 2 9M 4k', 'disk.qcow2'], { cwd: dir }), 'write disk.qcow2');
    must(qemuImg(['snapshot', '-c', 'first', 'disk.qcow2'], { cwd: dir }), 'snapshot');
    must(qemuIo(['-f', 'qcow2', '-c', 'write -P 3 30M 5M', 'disk.qcow2'], { cwd: dir }), 'write disk.qcow2');
    must(qemuImg(['bitmap', '--add', '-g', '16k', 'disk.qcow2', 'tracking'], { cwd: dir }), 'bitmap');
    must(qemuImg(['create', '-q', '-f', 'qcow2', '-b', 'disk.qcow2', '-F', 'qcow2', 'overlay.qcow2'], { cwd: dir }), 'overlay');
    must(qemuIo(['-f', 'qcow2', '-c', 'write -P 4 40M 64k', 'overlay.qcow2'], { cwd: dir }), 'write overlay');
  });

  afterAll(() => {
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
  });

  it('--size with every suffix form, default (raw) and qcow2 targets', () => {
    for (const size of ['1000', '1B', '0x100', '1.7k', '1.', '012', ' 1k', '7.99E', '9223372036854775807']) expectSameMeasure(['--output=json', '--size', size], dir);
    for (const size of ['0', '1', '1.5M', '64k', '1G', '2P']) bothOutputs(['-O', 'qcow2', '--size', size], dir);
    bothOutputs(['-O', 'qcow2', '-o', 'cluster_size=2M', '--size', '2E'], dir);
    bothOutputs(['-O', 'qcow2', '--size=100G', '--output=json'], dir);
  });

  it('-o as QemuOpts: last value wins, flags, qemu number syntaxes, options measure ignores', () => {
    // (The engine's tests cover every cluster size and refcount width; here the option syntax matters.)
    for (const [clusterSize, refcountBits] of [['512', '1'], ['64k', '64'], ['2M', '2']]) {
      expectSameMeasure(['--output=json', '-O', 'qcow2', '-o', `cluster_size=${clusterSize},refcount_bits=${refcountBits}`, '--size', '10G'], dir);
    }
    for (const o of [
      ['cluster_size=4k', '-o', 'cluster_size=16k'],
      ['compat=1.1,compat=0.10'],
      ['preallocation=off,preallocation=full'],
      ['preallocation=falloc'],
      ['preallocation=metadata'],
      ['extended_l2'],
      ['extended_l2=yes,cluster_size=128k'],
      ['extended_l2=on,compat=0.10'],
      ['lazy_refcounts=y,compat=0.10'],
      ['refcount_bits=0x8'],
      ['refcount_bits=010'],
      ['cluster_size=0x1000'],
      ['cluster_size=8k,,'],
      ['nocow=on,extent_size_hint=1M'],
      ['backing_file=base.qcow2,backing_fmt=qcow2'],
      ['encryption=on'],
      ['encrypt.format=aes'],
      ['compression_type=zstd'],
      ['data_file=x.data,data_file_raw=on'],
    ]) {
      expectSameMeasure(['--output=json', '-O', 'qcow2', '-o', ...o, '--size', '3G'], dir);
    }
    bothOutputs(['-O', 'raw', '-o', 'preallocation=metadata,nocow=on', '--size', '3G'], dir);
    bothOutputs(['-O', 'raw', '-o', 'preallocation=bogus', '--size', '3G'], dir);
  });

  it('FILE: raw, qcow2, chains, snapshots, bitmaps, in both output formats', () => {
    for (const file of ['sparse.raw', 'disk.qcow2', 'overlay.qcow2']) {
      bothOutputs(['-O', 'qcow2', file], dir);
      for (const target of [[], ['-O', 'qcow2', '-o', 'cluster_size=512'], ['-O', 'qcow2', '-o', 'cluster_size=2M,extended_l2=on'], ['-O', 'qcow2', '-o', 'compat=0.10']]) {
        expectSameMeasure(['--output=json', ...target, file], dir);
      }
    }
    bothOutputs(['-f', 'raw', '-O', 'qcow2', 'sparse.raw'], dir);
    bothOutputs(['-f', 'raw', '-O', 'qcow2', 'disk.qcow2'], dir);
    bothOutputs(['-U', '-O', 'qcow2', '-o', 'backing_file=', 'disk.qcow2'], dir);
    bothOutputs(['-O', 'qcow2', '-o', 'preallocation=full', 'overlay.qcow2'], dir);
    bothOutputs(['-O', 'qcow2', '-o', 'size=1G', 'sparse.raw'], dir);
    for (const l of ['first', '1', 'snapshot.name=first', 'snapshot.id=1', 'snapshot.id=1,snapshot.name=first']) expectSameMeasure(['-O', 'qcow2', '-l', l, 'disk.qcow2'], dir);
  });

  it('-s ID_OR_NAME (a qcowkit extension) is -l ID_OR_NAME', () => {
    const viaL = qcowkit(['measure', '-O', 'qcow2', '-l', 'first', 'disk.qcow2'], dir);
    const viaS = qcowkit(['measure', '-O', 'qcow2', '-s', 'first', 'disk.qcow2'], dir);
    expect(viaS).toEqual(viaL);
    expect(viaL.status).toBe(0);
  });

  it('every image of the committed corpus', () => {
    const corpus = corpusDir();
    for (const image of loadManifest(corpus)) {
      expectSameMeasure(['-O', 'qcow2', image.file], corpus);
    }
  });

  it('fails like qemu-img on bad argument combinations, sizes, formats and snapshots', () => {
    const cases: string[][] = [
      [],
      ['--size', '1G', 'sparse.raw'],
      ['sparse.raw', 'disk.qcow2'],
      ['-f', 'raw', '--size', '1G'],
      ['-l', 'x', '--size', '1G'],
      ['--output=xml', '--size', '1M'],
      ['--size', '1x'],
      ['--size', '-1'],
      ['--size', '1.5'],
      ['--size', '8E'],
      ['--size', '16E'],
      ['-O', 'foo', '--size', '1G'],
      ['-O', 'vmdk', '--size', '1G'],
      ['-O', 'qcow2', '-o', 'size=1M'],
      ['-l', 'nope', 'disk.qcow2'],
      ['-l', 'snapshot.name=nope', 'disk.qcow2'],
      ['-l', 'snapshot.id=1,snapshot.name=other', 'disk.qcow2'],
      ['-l', 'snapshot.foo=1', 'disk.qcow2'],
      ['-l', 'x', 'sparse.raw'],
    ];
    for (const args of cases) expectSameMeasure(args, dir);
    // A file that does not open: the same exit status (the message is qcowkit's usual one).
    expect(qcowkit(['measure', 'missing.qcow2'], dir).status).toBe(qemuImg(['measure', 'missing.qcow2'], { cwd: dir }).status);
  });

  it('fails like qemu-img on bad -o lists and values', () => {
    const cases: string[][] = [
      ['-O', 'qcow2', '-o', 'compat=v3', '--size', '1G'],
      ['-O', 'qcow2', '-o', 'compat=0.10,refcount_bits=8', '--size', '1G'],
      ['-O', 'qcow2', '-o', 'cluster_size=1000', '--size', '1G'],
      ['-O', 'qcow2', '-o', 'cluster_size=4M', '--size', '1G'],
      ['-O', 'qcow2', '-o', 'cluster_size=0', '--size', '1G'],
      ['-O', 'qcow2', '-o', 'cluster_size=abc', '--size', '1G'],
      ['-O', 'qcow2', '-o', 'cluster_size=1.5k', '--size', '1G'],
      ['-O', 'qcow2', '-o', 'extended_l2=on,cluster_size=8k', '--size', '1G'],
      ['-O', 'qcow2', '-o', 'extended_l2=maybe', '--size', '1G'],
      ['-O', 'qcow2', '-o', 'refcount_bits=3', '--size', '1G'],
      ['-O', 'qcow2', '-o', 'refcount_bits=128', '--size', '1G'],
      ['-O', 'qcow2', '-o', 'refcount_bits=-16', '--size', '1G'],
      ['-O', 'qcow2', '-o', 'refcount_bits=abc', '--size', '1G'],
      ['-O', 'qcow2', '-o', 'refcount_bits=16.5', '--size', '1G'],
      ['-O', 'qcow2', '-o', 'preallocation=bogus', '--size', '1G'],
      ['-O', 'qcow2', '-o', 'foo=1', '--size', '1G'],
      ['-O', 'qcow2', '-o', 'help', '--size', '1G'],
      ['-O', 'qcow2', '-o', ',cluster_size=4k', '--size', '1G'],
      ['-O', 'qcow2', '-o', 'cluster_size=4k,', '--size', '1G'],
      ['-O', 'raw', '-o', 'cluster_size=4k', '--size', '1G'],
      ['-O', 'raw', '-o', 'size=abc', '--size', '1G'],
      ['-O', 'qcow2', '-o', 'cluster_size=512', '--size', '100T'],
      ['-O', 'qcow2', '-o', 'size=100T,cluster_size=512', 'sparse.raw'],
    ];
    for (const args of cases) expectSameMeasure(args, dir);
  });
});
