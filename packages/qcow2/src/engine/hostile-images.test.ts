import { describe, expect, it } from 'vitest';
import { Qcow2Error } from '../errors.js';
import { MemoryStorage } from '../io/memory-storage.js';
import { Qcow2Image } from './qcow2-image.js';
import { openImage } from '../device/open-image.js';
import type { HostFiles } from '../device/host-files.js';
import { minimalImage, patchU32, patchU64 } from '../test-support/minimal-image.js';

async function openBytes(bytes: Uint8Array): Promise<Qcow2Image> {
  return Qcow2Image.open(new MemoryStorage(bytes, { name: 'hostile.qcow2' }));
}

async function expectCode(promise: Promise<unknown>, code: string): Promise<Qcow2Error> {
  const started = Date.now();
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error, 'expected a Qcow2Error').toBeInstanceOf(Qcow2Error);
  expect((error as Qcow2Error).code).toBe(code);
  expect((error as Qcow2Error).message).not.toContain('\n');
  expect(Date.now() - started).toBeLessThan(1000);
  return error as Qcow2Error;
}

describe('hostile and broken images give one typed error, fast', () => {
  it('opens the minimal image (the control case)', async () => {
    const image = await openBytes(minimalImage());
    expect(image.virtualSize).toBe(64 * 1024 * 1024);
    expect(await image.segments(0, image.virtualSize)).toHaveLength(1);
  });

  it('garbage', async () => {
    await expectCode(openBytes(new Uint8Array(4096).fill(0x5a)), 'BAD_MAGIC');
  });

  it('an empty file and a file cut inside the header', async () => {
    await expectCode(openBytes(new Uint8Array(0)), 'TRUNCATED');
    await expectCode(openBytes(minimalImage().subarray(0, 50)), 'TRUNCATED');
  });

  it('a file cut before its L1 table', async () => {
    await expectCode(openBytes(minimalImage().subarray(0, 3 * 65536)), 'TRUNCATED');
  });

  it('an L1 size of 2^31-1', async () => {
    const error = await expectCode(openBytes(patchU32(minimalImage(), 36, 0x7fffffff)), 'L1_TOO_LARGE');
    expect(error.file).toBe('hostile.qcow2');
  });

  it('an L1 too small for the virtual size', async () => {
    await expectCode(openBytes(patchU64(minimalImage(), 24, 1n << 50n)), 'BAD_HEADER');
  });

  it('a virtual size beyond 2^53', async () => {
    await expectCode(openBytes(patchU64(minimalImage(), 24, 1n << 62n)), 'OFFSET_TOO_LARGE');
  });

  it('a snapshot count of 2^28', async () => {
    const image = patchU32(minimalImage(), 60, 2 ** 28);
    patchU64(image, 64, 65536n);
    await expectCode(openBytes(image), 'TOO_MANY_SNAPSHOTS');
  });

  it('a snapshot table running past the end of the file', async () => {
    const image = patchU32(minimalImage(), 60, 10000); // 10000 entries of >= 40 bytes cannot fit in 64 KiB
    patchU64(image, 64, 3n * 65536n);
    await expectCode(openBytes(image), 'TRUNCATED');
  });

  it('a refcount table of 2^31 clusters', async () => {
    await expectCode(openBytes(patchU32(minimalImage(), 56, 0x80000000)), 'REFCOUNT_TABLE_TOO_LARGE');
  });

  it('a misaligned L1 table offset', async () => {
    await expectCode(openBytes(patchU64(minimalImage(), 40, 3n * 65536n + 512n)), 'MISALIGNED_OFFSET');
  });

  it('cluster bits out of range', async () => {
    await expectCode(openBytes(patchU32(minimalImage(), 20, 40)), 'BAD_HEADER');
  });

  it('an unknown incompatible feature bit, named', async () => {
    const error = await expectCode(openBytes(patchU64(minimalImage(), 72, 1n << 40n)), 'UNSUPPORTED_FEATURE');
    expect(error.message).toContain('bit 40');
  });

  it('an L2 entry pointing to a misaligned cluster', async () => {
    const bytes = minimalImage();
    const grown = new Uint8Array(5 * 65536);
    grown.set(bytes);
    const view = new DataView(grown.buffer);
    view.setBigUint64(3 * 65536, (4n * 65536n) | (1n << 63n)); // L1[0] -> L2 at cluster 4
    view.setBigUint64(4 * 65536, 0x12345600n | (1n << 63n)); // L2[0] -> unaligned host cluster
    const image = await openBytes(grown);
    await expectCode(image.segments(0, 65536), 'BAD_L2_ENTRY');
  });

  it('two images naming each other as backing files', async () => {
    const withBacking = (name: string): Uint8Array => minimalImage(64 * 1024 * 1024, { backingFile: name });
    const files: Record<string, Uint8Array> = { 'a.qcow2': withBacking('b.qcow2'), 'b.qcow2': withBacking('a.qcow2') };
    const hostFiles: HostFiles = {
      async open(name) {
        const bytes = files[name];
        if (bytes === undefined) throw new Qcow2Error('IO_ERROR', 'No such file or directory', { file: name });
        return new MemoryStorage(bytes, { name });
      },
    };
    const error = await expectCode(openImage('a.qcow2', { hostFiles }), 'BACKING_LOOP');
    expect(error.message).toContain('a.qcow2');
  });

  it('a chain deeper than the limit', async () => {
    const hostFiles: HostFiles = {
      async open(name) {
        const depth = Number(/(\d+)/.exec(name)![1]);
        return new MemoryStorage(minimalImage(64 * 1024 * 1024, { backingFile: `layer${depth + 1}.qcow2` }), { name });
      },
    };
    await expectCode(openImage('layer0.qcow2', { hostFiles, maxChainDepth: 10 }), 'CHAIN_TOO_DEEP');
  });
});
