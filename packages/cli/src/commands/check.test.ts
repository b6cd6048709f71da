import { cpSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { corpusDir, generatedDir, hasCorpus, hasQemuImg, hasQemuIo, isCI, loadManifest,  requireQemuImg } from '../../../../fixtures/corpus.js';
import { brokenCases } from '../../../qcow2/src/test-support/damaged-images.js';
import { percent2 } from './check.js';
import {  qcowkit, qemu, type Run } from '../test-support/run-cli.js';

requireQemuImg();




/** qemu-img's stderr with qcowkit's program name, for a line-by-line comparison. */
function asQcowkit(stderr: string): string {
  return stderr.replace(/^qemu-img: /gm, 'qcowkit: ');
}

/** `check ARGS` with both tools from `cwd`: same stdout byte for byte, same exit status, same stderr. */
function expectSameCheck(args: string[], cwd: string): Run {
  const theirs = qemu(['check', ...args], cwd);
  const ours = qcowkit(['check', ...args], cwd);
  expect(ours.stdout, `qcowkit check ${args.join(' ')} (stderr: ${ours.stderr})`).toBe(theirs.stdout);
  expect(ours.status, `exit status of check ${args.join(' ')}: ${theirs.stderr} / ${ours.stderr}`).toBe(theirs.status);
  expect(ours.stderr).toBe(asQcowkit(theirs.stderr));
  return ours;
}

describe('percent2 prints like glibc %0.2f', () => {
  it('rounds exact halves to even, everything else to nearest', () => {
    expect(percent2(0.125)).toBe('0.12');
    expect(percent2(0.375)).toBe('0.38');
    expect(percent2(12.625)).toBe('12.62');
    expect(percent2(100)).toBe('100.00');
    expect(percent2((17 * 100) / 256)).toBe('6.64');
    expect(percent2((6 * 100) / 17)).toBe('35.29');
    expect(percent2(0)).toBe('0.00');
  });
});

function corpusSets(): Array<[string, string]> {
  const sets: Array<[string, string]> = [['small', corpusDir()]];
  if (hasCorpus(generatedDir()) || isCI()) sets.push(['large', generatedDir()]);
  return sets;
}

describe.skipIf(!hasQemuImg())('qcowkit check prints what qemu-img check prints', () => {
  for (const [setName, dir] of corpusSets()) {
    describe(`the ${setName} corpus`, () => {
      for (const image of loadManifest(dir)) {
        it(image.file, () => {
          for (const output of ['human', 'json']) expectSameCheck([`--output=${output}`, image.file], dir);
          expectSameCheck(['-q', image.file], dir);
        });
      }
    });
  }

  it('refuses raw images with exit status 63, also when told the format', () => {
    expectSameCheck(['raw.img'], corpusDir());
    expectSameCheck(['-f', 'raw', 'c4k.qcow2'], corpusDir());
    expectSameCheck(['--output=json', '-f', 'raw', 'c4k.qcow2'], corpusDir());
  });

  it('rejects a bad -r mode and a bad --output as qemu-img does (exit 1)', () => {
    const r = qcowkit(['check', '-r', 'some', 'c4k.qcow2'], corpusDir());
    expect(r.status).toBe(1);
    expect(r.stderr).toBe("qcowkit: Unknown option value for -r (expecting 'leaks' or 'all'): some\n");
    expect(qcowkit(['check', '--output=xml', 'c4k.qcow2'], corpusDir()).status).toBe(1);
  });

  it('fails (exit 1) when the image or its backing file cannot be opened', () => {
    const dir = mkdtempSync(join(tmpdir(), 'qcowkit-check-open-'));
    try {
      cpSync(join(corpusDir(), 'short-overlay.qcow2'), join(dir, 'overlay.qcow2'));
      expect(qcowkit(['check', 'overlay.qcow2'], dir).status).toBe(qemu(['check', 'overlay.qcow2'], dir).status);
      expect(qcowkit(['check', 'missing.qcow2'], dir).status).toBe(1);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  describe('damaged images: check, -r leaks and -r all', () => {
    let root: string;
    beforeAll(() => {
      root = mkdtempSync(join(tmpdir(), 'qcowkit-cli-check-'));
    });
    afterAll(() => rmSync(root, { recursive: true, force: true }));

    /** Where qcowkit's repair knowingly differs from qemu's (see engine/repair.test.ts for why). */
    const repairDiffers = (name: string, mode: string): boolean =>
      (mode === 'all' &&
        ['refcount table entry with reserved bits', 'unaligned refcount block', 'refcount block past the end of the file', 'snapshots: refcount of a shared cluster cleared', 'bitmaps: bitmap table refcount cleared'].includes(
          name,
        )) ||
      (mode === 'leaks' && name === 'unaligned refcount block');

    for (const damage of brokenCases) {
      it.skipIf(damage.io === true && !hasQemuIo())(damage.name, () => {
        const original = mkdtempSync(join(root, 'case-'));
        const file = damage.make(original);
        for (const output of ['human', 'json']) expectSameCheck([`--output=${output}`, file], original);
        for (const mode of ['leaks', 'all']) {
          for (const output of ['human', 'json']) {
            const theirsDir = mkdtempSync(join(root, 'qemu-'));
            const oursDir = mkdtempSync(join(root, 'ours-'));
            cpSync(original, theirsDir, { recursive: true });
            cpSync(original, oursDir, { recursive: true });
            const args = ['check', '-r', mode, `--output=${output}`, file];
            const theirs = qemu(args, theirsDir);
            const ours = qcowkit(args, oursDir);
            if (damage.repairRefused === true) {
              // Refused before writing anything (qemu goes ahead and frees clusters the snapshot table still uses).
              expect(ours.status).toBe(1);
              expect(ours.stderr).toMatch(/nothing was repaired/);
              expect(readFileSync(join(oursDir, file)).equals(readFileSync(join(original, file)))).toBe(true);
              continue;
            }
            if (repairDiffers(damage.name, mode)) {
              // qcowkit repairs, qemu fails or places the new refcount structures elsewhere: check the result.
              expect(ours.status, ours.stderr).toBeLessThanOrEqual(theirs.status);
              expect(qemu(['check', file], oursDir).status).toBeLessThanOrEqual(qemu(['check', file], theirsDir).status);
              continue;
            }
            expect(ours.stdout, `${args.join(' ')}: ${ours.stderr}`).toBe(theirs.stdout.replace(/filename": ".*"/, `filename": "${file}"`));
            expect(ours.status).toBe(theirs.status);
            expect(ours.stderr).toBe(asQcowkit(theirs.stderr));
          }
        }
      });
    }
  });

  it('repairs the dirty image (-r all): the dirty bit is cleared and the image is writable again', () => {
    const dir = mkdtempSync(join(tmpdir(), 'qcowkit-check-dirty-'));
    try {
      cpSync(join(corpusDir(), 'dirty.qcow2'), join(dir, 'dirty.qcow2'));
      cpSync(join(corpusDir(), 'dirty.qcow2'), join(dir, 'before.qcow2'));
      const r = qcowkit(['check', '-r', 'all', 'dirty.qcow2'], dir);
      expect(r.status, r.stderr).toBe(0);
      expect(r.stdout).toContain('The following inconsistencies were found and repaired:\n\n    0 leaked clusters\n    3 corruptions\n\nDouble checking the fixed image now...\nNo errors were found on the image.\n');
      const info = JSON.parse(qemu(['info', '--output=json', 'dirty.qcow2'], dir).stdout) as { 'dirty-flag': boolean };
      expect(info['dirty-flag']).toBe(false);
      expect(qemu(['compare', 'before.qcow2', 'dirty.qcow2'], dir).status).toBe(0);
      expect(qemu(['check', 'dirty.qcow2'], dir).status).toBe(0);
      // qcowkit's writer refuses dirty images; after the repair it writes.
      const w = qcowkit(['io', '-c', 'write -P 0x5a 0 4k', 'dirty.qcow2'], dir);
      expect(w.status, w.stderr).toBe(0);
      expect(qemu(['check', 'dirty.qcow2'], dir).status).toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
