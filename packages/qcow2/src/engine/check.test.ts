import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  corpusDir,
  generatedDir,
  hasCorpus,
  hasQemuImg,
  hasQemuIo,
  imagePath,
  isCI,
  loadManifest,
  requireQemuImg,
} from '../../../../fixtures/corpus.js';
import { Qcow2Device } from '../device/qcow2-device.js';
import { MemoryStorage } from '../io/memory-storage.js';
import { FileStorage, openImageFile } from '../node/index.js';
import { checkImage, checkStorage, hex64, type CheckReport } from './check.js';
import { Qcow2Image } from './qcow2-image.js';
import { asQemuJson, brokenCases, exitStatus, qemuCheck, type QemuCheck } from '../test-support/damaged-images.js';

requireQemuImg();

/**
 * checkImage against `qemu-img check` on the same file: the same counts, the same exit status, and the same
 * lines on stderr (qemu prints what it finds there; qcowkit's report carries the same lines).
 */

async function checkFile(path: string): Promise<CheckReport> {
  const device = await openImageFile(path, { format: 'qcow2' });
  try {
    if (!(device instanceof Qcow2Device)) throw new Error('not qcow2');
    return await checkImage(device.image);
  } finally {
    await device.close();
  }
}

function expectSameAsQemu(report: CheckReport, theirs: QemuCheck, file: string): void {
  expect(exitStatus(report), `exit status; qemu said: ${theirs.messages.join('\n')}`).toBe(theirs.status);
  if (theirs.json !== undefined) expect(asQemuJson(report, file)).toEqual({ ...theirs.json, filename: file });
  else expect(report.failure ?? report.checkErrors, 'qemu printed no report: the check could not complete').toBeTruthy();
  expect(report.messages.map((m) => m.text)).toEqual(theirs.messages);
}

function corpusSets(): Array<[string, string]> {
  const sets: Array<[string, string]> = [['small', corpusDir()]];
  if (hasCorpus(generatedDir()) || isCI()) sets.push(['large', generatedDir()]);
  return sets;
}

describe.skipIf(!hasQemuImg())('check agrees with qemu-img check', () => {
  for (const [setName, dir] of corpusSets()) {
    describe(`the ${setName} corpus`, () => {
      for (const image of loadManifest(dir).filter((e) => e.format === 'qcow2')) {
        it(image.file, async () => {
          const report = await checkFile(imagePath(dir, image));
          expectSameAsQemu(report, qemuCheck(image.file, dir), image.file);
          expect(exitStatus(report)).toBe(image.checkStatus);
        });
      }
    });
  }

  describe('damaged images', () => {
    let dir: string;
    beforeAll(() => {
      dir = mkdtempSync(join(tmpdir(), 'qcowkit-check-'));
    });
    afterAll(() => rmSync(dir, { recursive: true, force: true }));

    for (const damage of brokenCases) {
      it.skipIf(damage.io === true && !hasQemuIo())(damage.name, async () => {
        const caseDir = mkdtempSync(join(dir, 'case-'));
        const file = damage.make(caseDir);
        const theirs = qemuCheck(file, caseDir);
        if (damage.clean !== true) expect(theirs.status, 'the damage must be visible to qemu').not.toBe(0);
        const storage = await FileStorage.open(join(caseDir, file));
        const direct = await checkStorage(storage).finally(() => storage.close());
        expectSameAsQemu(direct, theirs, file);
        if (damage.unopenable === true) await expect(checkFile(join(caseDir, file))).rejects.toThrow(/snapshot/);
        else expect(await checkFile(join(caseDir, file))).toEqual(direct);
      });
    }
  });
});

describe('check on hand-made images (no qemu needed)', () => {
  it('reports an image as qemu would: clean image', async () => {
    // The minimal image: header, refcount table, refcount block, L1 table, each counted once.
    const { minimalImage } = await import('../test-support/minimal-image.js');
    const image = await Qcow2Image.open(new MemoryStorage(minimalImage(), { name: 'mem.qcow2' }));
    const report = await checkImage(image);
    expect(report).toMatchObject({ corruptions: 0, leaks: 0, checkErrors: 0, imageEndOffset: 4 * 65536, totalClusters: 1024, allocatedClusters: 0 });
    expect(report.messages).toEqual([]);
  });

  it('finds a leak and a refcount too low', async () => {
    const { minimalImage } = await import('../test-support/minimal-image.js');
    const bytes = minimalImage();
    const view = new DataView(bytes.buffer);
    view.setUint16(2 * 65536 + 2 * 2, 0); // refcount block: cluster 2 (the block itself) says 0
    view.setUint16(2 * 65536 + 3 * 2, 3); // cluster 3 (the L1 table) says 3
    const image = await Qcow2Image.open(new MemoryStorage(bytes, { name: 'mem.qcow2' }));
    const report = await checkImage(image);
    expect(report.messages.map((m) => m.text)).toEqual([
      'ERROR cluster 2 refcount=0 reference=1',
      'Leaked cluster 3 refcount=3 reference=1',
    ]);
    expect(report).toMatchObject({ corruptions: 1, leaks: 1 });
  });

  it('refuses a file too large to hold counters for, with a clear error', async () => {
    const { minimalImage } = await import('../test-support/minimal-image.js');
    const image = await Qcow2Image.open(new MemoryStorage(minimalImage(), { name: 'mem.qcow2' }));
    await expect(checkImage(image, { maxClusters: 2 })).rejects.toThrow(/too large to check: 4 clusters/);
  });

  it('prints 64-bit entries as qemu does', () => {
    expect(hex64(0x80000000, 0x7000)).toBe('8000000000007000');
    expect(hex64(0, 0x8000)).toBe('8000');
  });
});
