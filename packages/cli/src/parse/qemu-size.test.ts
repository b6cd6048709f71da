import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { hasQemuImg, requireQemuImg } from '../../../../fixtures/corpus.js';
import { qcowkit, qemu, type Run } from '../test-support/run-cli.js';
import { isValidOptionList, optionBool, optionNumber, optionPairs } from './option-list.js';
import { cvtnumBytes, optionSizeBytes } from './qemu-size.js';

requireQemuImg();

/**
 * Every command reads sizes with the one parser (parse/qemu-size.ts) and reports what it refuses the way the
 * matching qemu-img command does: these run each spelling through qemu-img 7.2 and qcowkit and compare.
 */

const dirs: string[] = [];
afterAll(() => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

/** qemu-img's stderr in qcowkit's shape: its lines joined, "qemu-img: " prefixes dropped, warnings apart. */
function messages(run: Run, tool: 'qemu-img' | 'qcowkit'): { warnings: string[]; error: string } {
  const lines = run.stderr.split('\n').filter((line) => line !== '');
  const warning = `${tool}: warning: `;
  // qemu-img parses some -o lists twice and so warns twice: each warning counts once.
  const warnings = [...new Set(lines.filter((line) => line.startsWith(warning)).map((line) => line.slice(warning.length)))];
  const error = lines
    .filter((line) => !line.startsWith(warning))
    .map((line) => line.replace(new RegExp(`^${tool}: `), '').replace(/^[^ ]+\.(?:img|raw|qcow2): /, ''))
    .join(' ');
  return { warnings, error };
}

/** Runs `setup` then `args` in a fresh directory for each tool; both must end, print and complain alike. */
function expectSame(args: string[], setup: string[][] = []): Run {
  const run = (tool: 'qemu-img' | 'qcowkit'): Run => {
    const dir = mkdtempSync(join(tmpdir(), 'qcowkit-tidy-size-'));
    dirs.push(dir);
    for (const step of setup) expect(qemu(step, dir).status).toBe(0);
    return tool === 'qemu-img' ? qemu(args, dir) : qcowkit(args, dir);
  };
  const theirs = run('qemu-img');
  const ours = run('qcowkit');
  const what = args.join(' ');
  expect(ours.stdout, what).toBe(theirs.stdout);
  expect(ours.status, `${what}: ${theirs.stderr} / ${ours.stderr}`).toBe(theirs.status);
  expect(messages(ours, 'qcowkit'), what).toEqual(messages(theirs, 'qemu-img'));
  return ours;
}

const SPELLINGS = ['1M', '1.5M', '1.7k', '0x100000', '0x1k', '1x', '1.5', '1 k', '8E', '16E', '3b', '1.5b'];

describe.skipIf(!hasQemuImg())('sizes on the command line, as qemu-img reads them', () => {
  it('create SIZE (cvtnum "image size")', () => {
    for (const size of SPELLINGS) expectSame(['create', '-f', 'raw', 'd.raw', size]);
  });

  it('create -o size= and cluster_size= (QemuOpts sizes)', () => {
    // (8E: qemu-img prints a negative size before it fails; not a spelling question.)
    for (const size of [...SPELLINGS.filter((s) => s !== '8E'), '-1']) expectSame(['create', '-f', 'raw', '-o', `size=${size}`, 'd.raw']);
    for (const size of ['64k', '0x10000', '1x', '16E']) expectSame(['create', '-f', 'qcow2', '-o', `cluster_size=${size}`, 'd.qcow2', '1M']);
  });

  it('resize SIZE, +SIZE (QemuOpts size)', () => {
    for (const size of ['2M', '+1M', '+0x1k', '1x', '+1.5', '16E']) expectSame(['resize', '-f', 'raw', 'd.raw', size], [['create', '-f', 'raw', 'd.raw', '1M']]);
  });

  it('map --start-offset and --max-length (cvtnum)', () => {
    const setup = [['create', '-f', 'qcow2', 'd.qcow2', '4M']];
    for (const offset of ['1M', '0x1k', '1x', '9E']) expectSame(['map', '--output=json', '--start-offset', offset, '--max-length', '1k', 'd.qcow2'], setup);
    for (const length of ['2M', '1x']) expectSame(['map', '--output=json', '--max-length', length, 'd.qcow2'], setup);
  });

  it('dd bs= and count= (cvtnum, then dd\'s own range)', () => {
    const setup = [['create', '-f', 'raw', 'in.raw', '1M']];
    for (const operand of ['bs=1k', 'bs=1x', 'bs=16E', 'bs=4G', 'count=0x2', 'count=1.5']) expectSame(['dd', '-f', 'raw', '-O', 'raw', operand, 'if=in.raw', 'of=out.raw'], setup);
  });

  it('bool options take qemu\'s spellings (on/yes/true/y, off/no/false/n)', () => {
    for (const value of ['yes', 'y', 'no', 'n', 'true', 'maybe']) expectSame(['create', '-f', 'qcow2', '-o', `lazy_refcounts=${value}`, 'd.qcow2', '1M']);
    for (const value of ['16', '0x10', 'abc']) expectSame(['create', '-f', 'qcow2', '-o', `refcount_bits=${value}`, 'd.qcow2', '1M']);
  });
});

describe('the parsers themselves', () => {
  it('turn sizes into byte counts, and refuse what no byte count here reaches', () => {
    expect(cvtnumBytes('image size', '1.5M')).toBe(1572864);
    expect(() => cvtnumBytes('image size', '8E')).toThrow('Must be between 0 and 9223372036854775807');
    expect(optionSizeBytes('size', '64k')).toBe(65536);
    expect(() => optionSizeBytes('size', '16E')).toThrow("Value '16E' is out of range for parameter 'size'");
    expect(() => optionSizeBytes('size', '1x')).toThrow("Parameter 'size' expects a non-negative number below 2^64");
  });

  it('split option lists as QemuOpts does', () => {
    expect(optionPairs('a=1,,2,b,c=,d,,e')).toEqual([['a', '1,2'], ['b', 'on'], ['c', ''], ['d,e', 'on']]);
    expect([',a', '', 'a=1,', 'a=1,,', 'a=1,,,'].map(isValidOptionList)).toEqual([false, false, false, true, false]);
    expect(optionBool('x', 'y')).toBe(true);
    expect(() => optionBool('x', 'maybe')).toThrow("Parameter 'x' expects 'on' or 'off'");
    expect(optionNumber('x', '010')).toBe(8n);
    expect(optionNumber('x', '-1')).toBe((1n << 64n) - 1n);
  });
});
