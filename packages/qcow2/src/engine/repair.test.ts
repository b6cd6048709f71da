import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hasQemuImg, hasQemuIo, qemuImg, requireQemuImg } from '../../../../fixtures/corpus.js';
import { MemoryStorage } from '../io/memory-storage.js';
import type { Storage } from '../io/storage.js';
import { FileStorage, nodeCodecs } from '../node/index.js';
import { asQemuJson, brokenCases, exitStatus, qemuCheck, type BrokenCase } from '../test-support/damaged-images.js';
import type { CheckReport } from './check.js';
import { Qcow2Image } from './qcow2-image.js';
import { Qcow2Device } from '../device/qcow2-device.js';
import { openImageFile } from '../node/index.js';
import { repairImage, repairStorage, type RepairMode, type RepairReport } from './repair.js';

requireQemuImg();

/**
 * repairImage against `qemu-img check -r` on two copies of the same damaged image: the same counts fixed and
 * left, the same messages, `qemu-img check` as clean afterwards, and the same guest contents (`qemu-img
 * compare`). Where qcowkit knowingly differs from qemu, the case says so.
 */

/** Cases where qemu's own repair fails (its rebuild writes into a cluster its overlap check then refuses). */
const QEMU_CANNOT_REPAIR = new Set(['refcount table entry with reserved bits', 'unaligned refcount block']);
/**
 * qemu grows the file to hold a refcount block that lay past its end, counts it, and frees it after the rebuild
 * ("Repairing cluster N refcount=1 reference=0"); qcowkit never grows the file for it, so that line is missing.
 */
const PHANTOM_REFBLOCK = new Set(['refcount block past the end of the file']);
/**
 * qemu opened read-write stores its persistent bitmaps again on close, allocating clusters through refcounts that
 * `-r leaks` could not repair (a bitmap table with refcount 0 is free to it): its image ends up worse than before.
 * qcowkit does not touch bitmaps, so its image is left as the repair found it.
 */
const QEMU_BITMAP_STORE_AFTER_LEAKS = new Set(['bitmaps: bitmap table refcount cleared']);

/** Repairs a file through its storage (also the images Qcow2Image.open refuses), as the CLI does. */
async function repairFile(path: string, mode: RepairMode): Promise<RepairReport> {
  const storage = await FileStorage.open(path, { writable: true });
  try {
    return await repairStorage(storage, mode);
  } finally {
    await storage.close();
  }
}

/** What qemu-img check -r prints as its result: the second check when something was fixed, with the fixed counts. */
function finalReport(result: RepairReport): CheckReport {
  const { repair, recheck } = result;
  return recheck === undefined ? repair : { ...recheck, leaksFixed: repair.leaksFixed, corruptionsFixed: repair.corruptionsFixed };
}

function status(result: RepairReport): number {
  if (result.repair.failure !== undefined) return 1;
  return exitStatus(finalReport(result));
}

/** qemu-img compare: 0 equal, 1 different, 2 could not read. */
function compare(a: string, b: string): number {
  return qemuImg(['compare', '-f', 'qcow2', '-F', 'qcow2', a, b]).status;
}

describe.skipIf(!hasQemuImg())('repair agrees with qemu-img check -r', () => {
  let root: string;
  beforeAll(() => {
    root = mkdtempSync(join(tmpdir(), 'qcowkit-repair-'));
  });
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  for (const damage of brokenCases) {
    for (const mode of ['leaks', 'all'] as RepairMode[]) {
      it.skipIf(damage.io === true && !hasQemuIo())(`${damage.name}: -r ${mode}`, async () => {
        const original = mkdtempSync(join(root, 'case-'));
        const file = damage.make(original);
        const theirsDir = mkdtempSync(join(root, 'qemu-'));
        const oursDir = mkdtempSync(join(root, 'ours-'));
        cpSync(original, theirsDir, { recursive: true });
        cpSync(original, oursDir, { recursive: true });

        if (damage.repairRefused === true) {
          // Not safe to repair: refused before anything is written (qemu goes ahead and frees clusters in use).
          const before = readFileSync(join(oursDir, file));
          await expect(repairFile(join(oursDir, file), mode)).rejects.toMatchObject({ code: 'TRUNCATED' });
          expect(readFileSync(join(oursDir, file)).equals(before)).toBe(true);
          return;
        }
        const theirs = qemuCheck(file, theirsDir, ['-r', mode]);
        const result = await repairFile(join(oursDir, file), mode);
        const messages = [...result.repair.messages, ...(result.recheck?.messages ?? [])].map((m) => m.text);
        const qemuAfter = qemuCheck(file, theirsDir);
        const oursAfter = qemuCheck(file, oursDir);

        if (mode === 'all' && QEMU_CANNOT_REPAIR.has(damage.name)) {
          expect(theirs.status).toBe(1);
          expect(status(result), messages.join('\n')).toBe(0);
          expect(oursAfter.status, 'qemu-img check after the repair').toBe(0);
        } else {
          expect(status(result), `exit status; qemu said: ${theirs.messages.join('\n')}`).toBe(theirs.status);
          // After a rebuild qemu may place the new refcount structures in a free cluster inside the file;
          // qcowkit always writes them past its end, so the image may end later.
          const rebuilt = theirs.messages.includes('Rebuilding refcount structure');
          if (theirs.json === undefined) {
            expect(result.repair.failure).toBe('Input/output error');
          } else {
            const ours = asQemuJson(finalReport(result), file);
            if (rebuilt) {
              expect(ours['image-end-offset']).toBeGreaterThanOrEqual(theirs.json['image-end-offset'] ?? 0);
              ours['image-end-offset'] = theirs.json['image-end-offset'];
            }
            expect(ours).toEqual(theirs.json);
          }
          if (mode === 'all' && PHANTOM_REFBLOCK.has(damage.name)) {
            expect(messages).toEqual(theirs.messages.filter((m) => m !== 'Repairing cluster 256 refcount=1 reference=0'));
          } else {
            expect(messages).toEqual(theirs.messages);
          }
          if (mode === 'leaks' && QEMU_BITMAP_STORE_AFTER_LEAKS.has(damage.name)) {
            expect(oursAfter.json?.corruptions ?? 0).toBeLessThan(qemuAfter.json?.corruptions ?? 0);
          } else {
            expect(oursAfter.status, 'qemu-img check after both repairs').toBe(qemuAfter.status);
            // qemu also stores its persistent bitmaps anew when it closes an image opened read-write.
            const moved = rebuilt || damage.name.startsWith('bitmaps:');
            const end = moved ? { 'image-end-offset': oursAfter.json?.['image-end-offset'] } : {};
            expect(oursAfter.json).toEqual({ ...qemuAfter.json, ...end });
          }
        }

        // The guest sees the same disk after either repair, and the same as before it.
        const readable = compare(join(original, file), join(original, file)) === 0;
        if (readable) {
          expect(compare(join(original, file), join(oursDir, file)), 'guest contents before and after the repair').toBe(0);
          if (theirs.status !== 1) expect(compare(join(theirsDir, file), join(oursDir, file)), 'guest contents after qemu-img and qcowkit repairs').toBe(0);
        }
      });
    }
  }
});

// ---------------------------------------------------------------------------------------------------------
// Killed mid-repair

/** Storage over memory that logs every write, so any prefix of a repair's writes can be replayed. */
class RecordingStorage implements Storage {
  readonly writes: Array<{ offset: number; bytes: Uint8Array }> = [];
  constructor(private readonly inner: MemoryStorage) {}
  get name(): string {
    return this.inner.name;
  }
  read(buffer: Uint8Array, offset: number): Promise<number> {
    return this.inner.read(buffer, offset);
  }
  async write(buffer: Uint8Array, offset: number): Promise<void> {
    this.writes.push({ offset, bytes: buffer.slice() });
    await this.inner.write(buffer, offset);
  }
  size(): Promise<number> {
    return this.inner.size();
  }
  flush(): Promise<void> {
    return this.inner.flush();
  }
  truncate(size: number): Promise<void> {
    return this.inner.truncate(size);
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}

function errorClusters(messages: string[]): Set<string> {
  return new Set(messages.filter((m) => /^ERROR cluster \d+ /.test(m)).map((m) => m.split(' ')[2]!));
}

const CRASH_CASES = [
  'dirty image',
  'refcount cleared by hand',
  'refcount block past the end of the file',
  'leaked cluster',
  'COPIED flag missing',
  'misaligned preallocated zero cluster',
  'snapshots: shared L2 refcount too high, COPIED set in the active L1',
  '512-byte clusters, 1-bit refcounts: refcount cleared',
];

describe.skipIf(!hasQemuImg())('a repair killed at any write leaves an image no worse than before', () => {
  let root: string;
  beforeAll(() => {
    root = mkdtempSync(join(tmpdir(), 'qcowkit-repair-crash-'));
  });
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  for (const name of CRASH_CASES) {
    const damage = brokenCases.find((c) => c.name === name) as BrokenCase;
    it.skipIf(damage.io === true && !hasQemuIo())(name, async () => {
      const dir = mkdtempSync(join(root, 'case-'));
      const file = damage.make(dir);
      const path = join(dir, file);
      const before = new Uint8Array(readFileSync(path));
      const original = qemuCheck(file, dir);
      const storage = new RecordingStorage(new MemoryStorage(before.slice(), { name: file }));
      const image = await Qcow2Image.open(storage, { codecs: nodeCodecs });
      const result = await repairImage(image, 'all');
      expect(result.repair.failure).toBeUndefined();
      expect(storage.writes.length).toBeGreaterThan(0);

      const state = join(dir, `state-${file}`);
      let bytes = before.slice();
      for (let k = 0; k <= storage.writes.length; k++) {
        if (k > 0) {
          const { offset, bytes: data } = storage.writes[k - 1]!;
          if (offset + data.length > bytes.length) {
            const grown = new Uint8Array(offset + data.length);
            grown.set(bytes);
            bytes = grown;
          }
          bytes.set(data, offset);
        }
        writeFileSync(state, bytes);
        const now = qemuCheck(`state-${file}`, dir);
        // Never a cluster whose refcount is too low that was not too low before, never more corruptions.
        for (const cluster of errorClusters(now.messages)) expect(errorClusters(original.messages), `after ${k} writes: ${now.messages.join('\n')}`).toContain(cluster);
        expect(now.json?.corruptions ?? 0, `after ${k} writes`).toBeLessThanOrEqual(original.json?.corruptions ?? 0);
        if (compare(path, path) === 0) expect(compare(path, state), `guest contents after ${k} writes`).toBe(0);
      }
      // All writes done: clean.
      expect(qemuCheck(`state-${file}`, dir).status).toBe(0);
    });
  }
});

describe.skipIf(!hasQemuImg())('repairImage on an open image', () => {
  it('repairs the dirty image, refreshes the image object, and the writer accepts it afterwards', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'qcowkit-repair-image-'));
    try {
      const damage = brokenCases.find((c) => c.name === 'dirty image')!;
      const file = damage.make(dir);
      const path = join(dir, file);
      const storage = await FileStorage.open(path, { writable: true });
      const image = await Qcow2Image.open(storage, { codecs: nodeCodecs });
      expect(image.dirty).toBe(true);
      const result = await repairImage(image, 'all');
      expect(result.repair).toMatchObject({ corruptionsFixed: 3, leaksFixed: 0, failure: undefined });
      expect(result.recheck).toMatchObject({ corruptions: 0, leaks: 0, checkErrors: 0 });
      expect(image.dirty).toBe(false);
      expect(image.header.refcountTableOffset).toBe(11 * 4096);
      await image.close();

      const device = await openImageFile(path, { writable: true });
      expect(device).toBeInstanceOf(Qcow2Device);
      await (device as Qcow2Device).write(new Uint8Array(4096).fill(0x5a), 8192);
      await device.close();
      expect(qemuCheck(file, dir).status).toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refuses an unknown mode', async () => {
    await expect(repairStorage(new MemoryStorage(new Uint8Array(0)), 'some' as RepairMode)).rejects.toThrow(/expecting 'leaks' or 'all'/);
  });
});
