import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { hasQemuImg, qemuImg, requireQemuImg } from '../../../../fixtures/corpus.js';
import { HeaderExtensionType } from '../format/constants.js';
import { backingFormatOf } from '../format/header-extensions.js';
import { decodeHeader, encodeHeader } from '../format/header.js';
import { MemoryStorage } from '../io/memory-storage.js';
import { setBackingReference } from './backing-reference.js';
import { createQcow2 } from './create-image.js';
import { Qcow2Image } from './qcow2-image.js';

requireQemuImg();

const UNKNOWN_EXTENSION = 0x1234abcd;

/** A v3 image with a backing reference, a feature table, an unknown extension and unknown header bytes. */
async function imageWithExtras(clusterSize = 65536): Promise<MemoryStorage> {
  const storage = new MemoryStorage(new Uint8Array(0), { name: 'disk.qcow2' });
  await createQcow2(storage, { size: 1024 * 1024, clusterSize, backingFile: 'old-base.qcow2', backingFormat: 'qcow2' });
  const cluster0 = new Uint8Array(clusterSize);
  await storage.read(cluster0, 0);
  const header = decodeHeader(cluster0);
  header.headerLength = 120;
  header.unknownHeaderBytes = Uint8Array.from([1, 2, 3, 4, 5, 6, 7, 8]);
  header.extensions.push({ type: UNKNOWN_EXTENSION, data: Uint8Array.from([9, 8, 7]) });
  const encoded = encodeHeader(header);
  // Bytes 105..111 are padding the spec leaves alone: they must survive too.
  encoded[106] = 0x5a;
  await storage.write(new Uint8Array(clusterSize), 0);
  await storage.write(encoded, 0);
  return storage;
}

async function headerOf(storage: MemoryStorage) {
  const bytes = new Uint8Array(65536);
  await storage.read(bytes, 0);
  return { header: decodeHeader(bytes), bytes };
}

/** Counts the writes that reach a storage. */
class CountingStorage extends MemoryStorage {
  writes: Array<{ offset: number; length: number }> = [];
  override async write(buffer: Uint8Array, offset: number): Promise<void> {
    this.writes.push({ offset, length: buffer.length });
    await super.write(buffer, offset);
  }
}

describe('setBackingReference', () => {
  it('changes the name and format, keeps every other extension, header byte and cluster, in one write', async () => {
    const original = await imageWithExtras();
    const storage = new CountingStorage(original.contents().slice(), { name: 'disk.qcow2' });
    const image = await Qcow2Image.open(storage);
    const before = (await headerOf(storage)).header;
    await setBackingReference(image, { file: '../images/new-base.raw', format: 'raw' });
    expect(storage.writes).toEqual([{ offset: 0, length: expect.any(Number) }]);
    expect(storage.writes[0]!.length % 512).toBe(0);

    const { header, bytes } = await headerOf(storage);
    expect(header.backingFile).toBe('../images/new-base.raw');
    expect(backingFormatOf(header.extensions)).toBe('raw');
    // Same extensions in the same order, the backing format one replaced where it was.
    expect(header.extensions.map((e) => e.type)).toEqual(before.extensions.map((e) => e.type));
    expect(header.extensions.find((e) => e.type === UNKNOWN_EXTENSION)!.data).toEqual(Uint8Array.from([9, 8, 7]));
    expect(header.extensions.find((e) => e.type === HeaderExtensionType.FeatureNameTable)!.data).toEqual(
      before.extensions.find((e) => e.type === HeaderExtensionType.FeatureNameTable)!.data,
    );
    expect(header.unknownHeaderBytes).toEqual(Uint8Array.from([1, 2, 3, 4, 5, 6, 7, 8]));
    expect(bytes[106]).toBe(0x5a);
    // Every header field but the backing name's offset and size is byte-identical.
    const old = original.contents();
    expect(bytes.subarray(0, 8)).toEqual(old.subarray(0, 8));
    expect(bytes.subarray(20, 120)).toEqual(old.subarray(20, 120));
    // The rest of the file is untouched, and the open image follows.
    expect(storage.contents().subarray(65536)).toEqual(old.subarray(65536));
    expect(image.backingFile).toBe('../images/new-base.raw');
    expect(image.backingFormat).toBe('raw');
  });

  it('removes the reference and its format extension; a shorter header leaves no stale bytes', async () => {
    const storage = await imageWithExtras();
    const image = await Qcow2Image.open(storage);
    await setBackingReference(image, { file: 'a-much-longer-name-than-before-for-the-backing-file.qcow2', format: 'qcow2' });
    await setBackingReference(image, undefined);
    const { header, bytes } = await headerOf(storage);
    expect(header.backingFile).toBeUndefined();
    expect(header.backingFileOffset).toBe(0);
    expect(backingFormatOf(header.extensions)).toBeUndefined();
    expect(header.extensions.map((e) => e.type)).toEqual([HeaderExtensionType.FeatureNameTable, UNKNOWN_EXTENSION]);
    expect(new TextDecoder().decode(bytes)).not.toContain('longer-name');
  });

  it('adds a backing format extension first, as qemu orders them', async () => {
    const storage = new MemoryStorage(new Uint8Array(0), { name: 'plain.qcow2' });
    await createQcow2(storage, { size: 1024 * 1024 });
    const image = await Qcow2Image.open(storage);
    await setBackingReference(image, { file: 'base.qcow2', format: 'qcow2' });
    const { header } = await headerOf(storage);
    expect(header.extensions[0]!.type).toBe(HeaderExtensionType.BackingFormat);
    expect(header.backingFile).toBe('base.qcow2');
  });

  it('refuses a name qemu would refuse, and one that does not fit in cluster 0, writing nothing', async () => {
    const storage = await imageWithExtras(512);
    const image = await Qcow2Image.open(storage);
    const before = storage.contents().slice();
    await expect(setBackingReference(image, { file: 'x'.repeat(1024), format: 'raw' })).rejects.toMatchObject({ code: 'BAD_ARGUMENT' });
    await expect(setBackingReference(image, { file: 'y'.repeat(400), format: 'raw' })).rejects.toThrow(/do not fit in the first cluster/);
    expect(storage.contents()).toEqual(before);
    expect(image.backingFile).toBe('old-base.qcow2');
  });

  it.runIf(hasQemuImg())('qemu-img reads the rewritten header: info shows the new reference, check is clean', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'qcowkit-backing-ref-'));
    try {
      const storage = await imageWithExtras();
      const image = await Qcow2Image.open(storage);
      await setBackingReference(image, { file: 'new-base.raw', format: 'raw' });
      writeFileSync(join(dir, 'disk.qcow2'), storage.contents());
      writeFileSync(join(dir, 'new-base.raw'), new Uint8Array(1024 * 1024));
      const info = JSON.parse(qemuImg(['info', '--output=json', 'disk.qcow2'], { cwd: dir }).stdout) as Record<string, unknown>;
      expect(info['backing-filename']).toBe('new-base.raw');
      expect(info['backing-filename-format']).toBe('raw');
      expect(qemuImg(['check', 'disk.qcow2'], { cwd: dir }).status).toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
