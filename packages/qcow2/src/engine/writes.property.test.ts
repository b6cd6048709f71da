import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { hasQemuImg, requireQemuImg } from '../../../../fixtures/corpus.js';
import { isWritable } from '../device/block-device.js';
import { openImage } from '../device/open-image.js';
import { createQcow2, type CreateQcow2Options } from './create-image.js';
import { MemoryFiles } from '../test-support/memory-files.js';
import { apply, fillPattern, firstDifference, opArb, qemuCheck } from '../test-support/guest-model.js';

/**
 * The engine against a plain model of the guest disk: random writes, zero writes and discards at random
 * offsets and lengths, then the whole disk must read back as the model says, and qemu-img check must call the
 * image clean.
 */
interface Variant {
  name: string;
  create: Omit<CreateQcow2Options, 'size'>;
  size: number;
  backing: boolean;
}

const variants: Variant[] = [
  { name: 'default v3', create: {}, size: 3 * 1024 * 1024 + 1536, backing: false },
  { name: 'v3 over a backing file', create: {}, size: 3 * 1024 * 1024, backing: true },
  { name: 'v2 (compat=0.10)', create: { compat: '0.10' }, size: 2 * 1024 * 1024 + 512, backing: false },
  { name: 'v2 over a backing file', create: { compat: '0.10' }, size: 2 * 1024 * 1024, backing: true },
  { name: '512-byte clusters, 1-bit refcounts', create: { clusterSize: 512, refcountBits: 1 }, size: 1024 * 1024 + 512, backing: false },
  { name: '512-byte clusters, 64-bit refcounts, backing', create: { clusterSize: 512, refcountBits: 64 }, size: 1024 * 1024, backing: true },
  { name: 'extended L2', create: { extendedL2: true, clusterSize: 32768 }, size: 2 * 1024 * 1024, backing: false },
  { name: 'extended L2 over a backing file', create: { extendedL2: true, clusterSize: 16384 }, size: 2 * 1024 * 1024, backing: true },
];

describe('guest writes against a model of the disk', () => {
  requireQemuImg();
  for (const variant of variants) {
    it(`${variant.name}: contents equal the model and qemu-img check is clean`, async () => {
      await fc.assert(
        fc.asyncProperty(fc.array(opArb(), { minLength: 1, maxLength: 20 }), async (ops) => {
          const files = new MemoryFiles();
          const baseBytes = variant.backing ? fillPattern(variant.size - 4096, 7) : undefined;
          if (baseBytes !== undefined) files.add('base.raw', baseBytes.slice());
          const image = files.add('disk.qcow2');
          await createQcow2(image, {
            ...variant.create,
            size: variant.size,
            ...(variant.backing ? { backingFile: 'base.raw', backingFormat: 'raw' } : {}),
          });
          const device = await openImage('disk.qcow2', { hostFiles: files, writable: true });
          if (!isWritable(device)) throw new Error('not writable');
          let model: Uint8Array = new Uint8Array(variant.size);
          if (baseBytes !== undefined) model.set(baseBytes);
          const clusterSize = variant.create.clusterSize ?? 65536;
          const v2 = variant.create.compat === '0.10';
          for (const op of ops) model = await apply(device, model, op, { clusterSize, v2, backing: variant.backing });
          expect(device.size).toBe(model.length);
          const actual = new Uint8Array(model.length);
          await device.read(actual, 0);
          expect(firstDifference(actual, model)).toBe(-1);
          await device.close();
          // Reopen from the bytes: what was flushed at close must read back the same.
          const reopened = await openImage('disk.qcow2', { hostFiles: files });
          const again = new Uint8Array(model.length);
          await reopened.read(again, 0);
          expect(firstDifference(again, model)).toBe(-1);
          if (hasQemuImg()) {
            const check = qemuCheck(image.contents(), baseBytes);
            expect(check.output).toContain('No errors were found on the image.');
            expect(check.status).toBe(0);
          }
        }),
        { numRuns: 25 },
      );
    }, 180_000);
  }
});


describe('shrinking inside a cluster, then growing', () => {
  // Found by the model test above (extended L2, 32 KiB clusters): the shrunk disk's last cluster kept its bytes
  // past the new end, and growing showed them again. qemu 7.2 shows them too; a grown disk must read zeros.
  for (const variant of variants.filter((v) => !v.backing)) {
    it(`${variant.name}: the grown part reads zeros`, async () => {
      const files = new MemoryFiles();
      await createQcow2(files.add('disk.qcow2'), { ...variant.create, size: variant.size });
      const device = await openImage('disk.qcow2', { hostFiles: files, writable: true });
      if (!isWritable(device) || !('resize' in device)) throw new Error('not resizable');
      const resizable = device as typeof device & { resize(size: number): Promise<void> };
      await device.write(fillPattern(variant.size, 3), 0);
      const cut = 188928; // not a multiple of any cluster or subcluster size above 512 bytes
      await resizable.resize(cut);
      await resizable.resize(cut + 64 * 1024);
      const tail = new Uint8Array(64 * 1024);
      await device.read(tail, cut);
      expect(firstDifference(tail, new Uint8Array(tail.length))).toBe(-1);
      await device.close();
    });
  }
});
