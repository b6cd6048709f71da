/**
 * `qcowkit dd` against `qemu-img dd` on the same input: the output has the size qemu-img gives it, reads back
 * identical to qemu-img's output, qcow2 outputs pass qemu-img check with the same allocation, and bad operands
 * are refused with qemu-img's message and exit code.
 */
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { qemuIo, requireQemuImg, type QemuCheckResult } from '../../../../fixtures/corpus.js';
import { qcowkit, qemu } from '../test-support/run-cli.js';

requireQemuImg();

let work: string;
beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), 'qcowkit-pipeline-dd-'));
  expect(qemu(['create', '-q', '-f', 'qcow2', 'in.qcow2', '4M'], work).status).toBe(0);
  expect(qemuIo(['-c', 'write -P 7 0 1M', '-c', 'write -P 8 2M 512k', '-c', 'write -P 9 4000000 1000', 'in.qcow2'], { cwd: work }).status).toBe(0);
});
afterAll(() => rmSync(work, { recursive: true, force: true }));

const copies: Array<[string, string[]]> = [
  ['defaults: the whole input as raw', []],
  ['qcow2 output, bs=1M count=3 skip=1 (count counts from the start of the input, as qemu-img)', ['-O', 'qcow2', 'bs=1M', 'count=3', 'skip=1']],
  ['a block size that is not a sector multiple, skipping into the last megabyte', ['bs=1000', 'skip=4000']],
  ['the same into qcow2 (the size rounds up to a sector)', ['-O', 'qcow2', 'bs=1000', 'skip=4000']],
  ['-f raw reads the qcow2 file as bytes', ['-f', 'raw', 'bs=1k', 'count=1']],
  ['count=0 makes an empty output', ['count=0']],
  ['skip past the end: a warning, an empty output, exit 0', ['skip=100000']],
];

describe('dd copies what qemu-img dd copies', () => {
  copies.forEach(([name, args], i) => {
    it(name, () => {
      const qcow2 = args.includes('qcow2');
      const ours = `ours-${i}.${qcow2 ? 'qcow2' : 'raw'}`;
      const theirs = `theirs-${i}.${qcow2 ? 'qcow2' : 'raw'}`;
      const q = qemu(['dd', ...args, 'if=in.qcow2', `of=${theirs}`], work);
      const k = qcowkit(['dd', ...args, 'if=in.qcow2', `of=${ours}`], work);
      expect(k.status, k.stderr).toBe(q.status);
      expect(k.stderr.replace(/^qcowkit: /gm, '')).toBe(q.stderr.replace(/^qemu-img: /gm, ''));
      expect(statSync(join(work, ours)).size).toBe(statSync(join(work, theirs)).size);
      expect(qemu(['compare', ours, theirs], work).stdout).toBe('Images are identical.\n');
      if (qcow2) {
        const check = (f: string) => JSON.parse(qemu(['check', '--output=json', f], work).stdout) as QemuCheckResult;
        expect(check(ours).leaks ?? 0).toBe(0);
        expect(check(ours).corruptions ?? 0).toBe(0);
        expect(check(ours)['allocated-clusters']).toBe(check(theirs)['allocated-clusters']);
      }
    });
  });

  it('an existing output is replaced by one of the copied size', () => {
    expect(qemu(['create', '-q', '-f', 'raw', 'exists.raw', '10M'], work).status).toBe(0);
    expect(qcowkit(['dd', 'bs=1M', 'count=1', 'if=in.qcow2', 'of=exists.raw'], work).status).toBe(0);
    expect(statSync(join(work, 'exists.raw')).size).toBe(1024 * 1024);
  });
});

describe('dd refuses what qemu-img refuses, with its message', () => {
  const refusals: Array<[string, string[]]> = [
    ['bs=0', ['bs=0', 'if=in.qcow2', 'of=x.raw']],
    ['bs above INT_MAX', ['bs=3G', 'if=in.qcow2', 'of=x.raw']],
    ['bs not a number', ['bs=abc', 'if=in.qcow2', 'of=x.raw']],
    ['count not a number', ['count=abc', 'if=in.qcow2', 'of=x.raw']],
    ['negative skip', ['skip=-1', 'if=in.qcow2', 'of=x.raw']],
    ['unknown operand', ['if=in.qcow2', 'of=x.raw', 'seek=1']],
    ['operand without =', ['if=in.qcow2', 'of=x.raw', 'foo']],
    ['no output', ['if=in.qcow2']],
    ['unknown output format', ['-O', 'foo', 'if=in.qcow2', 'of=x.raw']],
  ];
  for (const [name, args] of refusals) {
    it(name, () => {
      const q = qemu(['dd', ...args], work);
      const k = qcowkit(['dd', ...args], work);
      expect(q.status).toBe(1);
      expect(k.status).toBe(1);
      const oneLine = (s: string, prefix: string) => s.split('\n').filter((l) => l !== '').map((l) => l.replace(prefix, '')).join(' ');
      expect(oneLine(k.stderr, 'qcowkit: ')).toBe(oneLine(q.stderr, 'qemu-img: '));
    });
  }
});
