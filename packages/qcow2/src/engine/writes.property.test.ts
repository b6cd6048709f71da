import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { hasQemuImg, requireQemuImg } from '../../../../fixtures/corpus.js';
import { isWritable, type WritableBlockDevice } from '../device/block-device.js';
import { openImage } from '../device/open-image.js';
import { Qcow2Device } from '../device/qcow2-device.js';
import { createQcow2, type CreateQcow2Options } from './create-image.js';
import { MemoryFiles } from '../test-support/memory-files.js';

/**
 * The engine against a plain model of the guest disk: random writes, zero writes and discards at random
 * offsets and lengths, then the whole disk must read back as the model says, and qemu-img check must call the
 * image clean.
 */
type Op =
  | { kind: 'resize'; fraction: number }
  | { kind: 'write'; offset: number; length: number; seed: number }
  | { kind: 'zero'; offset: number; length: number; unmap: boolean }
  | { kind: 'discard'; offset: number; length: number };

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

function fillPattern(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

/**
 * Ranges are drawn as fractions of the disk so they stay inside it after resizes; the model clips them to the
 * size at the time the operation runs.
 */
function opArb(): fc.Arbitrary<Op> {
  const range = fc
    .tuple(fc.double({ min: 0, max: 0.999, noNaN: true }), fc.integer({ min: 1, max: 300 * 1024 }))
    .map(([offset, length]) => ({ offset, length }));
  return fc.oneof(
    { weight: 1, arbitrary: fc.double({ min: 0.3, max: 1.8, noNaN: true }).map((fraction) => ({ kind: 'resize' as const, fraction })) },
    { weight: 5, arbitrary: fc.tuple(range, fc.nat()).map(([r, seed]) => ({ kind: 'write' as const, ...r, seed })) },
    { weight: 2, arbitrary: fc.tuple(range, fc.boolean()).map(([r, unmap]) => ({ kind: 'zero' as const, ...r, unmap })) },
    { weight: 1, arbitrary: range.map((r) => ({ kind: 'discard' as const, ...r })) },
  );
}

function qemuCheck(bytes: Uint8Array, backing: Uint8Array | undefined): { status: number; output: string } {
  const dir = mkdtempSync(join(tmpdir(), 'qcowkit-prop-'));
  try {
    writeFileSync(join(dir, 'disk.qcow2'), bytes);
    if (backing !== undefined) writeFileSync(join(dir, 'base.raw'), backing);
    const result = spawnSync('qemu-img', ['check', join(dir, 'disk.qcow2')], { encoding: 'utf8' });
    return { status: result.status ?? -1, output: `${result.stdout}${result.stderr}` };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

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
          let model = new Uint8Array(variant.size);
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

/** Applies `op` to the device and the model; returns the model (a new one when the size changed). */
async function apply(
  device: WritableBlockDevice,
  model: Uint8Array,
  op: Op,
  image: { clusterSize: number; v2: boolean; backing: boolean },
): Promise<Uint8Array> {
  if (op.kind === 'resize') {
    const newSize = Math.max(512, Math.round((model.length * op.fraction) / 512) * 512);
    if (!(device instanceof Qcow2Device)) throw new Error('not qcow2');
    await device.resize(newSize);
    // A shrink drops the tail; a grow reads zeros (qemu hides a longer backing file's data there).
    const resized = new Uint8Array(newSize);
    resized.set(model.subarray(0, Math.min(newSize, model.length)));
    return resized;
  }
  const offset = Math.floor(op.offset * model.length);
  const length = Math.min(op.length, model.length - offset);
  switch (op.kind) {
    case 'write': {
      const data = fillPattern(length, op.seed);
      await device.write(data, offset);
      model.set(data, offset);
      return model;
    }
    case 'zero':
      await device.writeZeroes(offset, length, { unmap: op.unmap });
      model.fill(0, offset, offset + length);
      return model;
    case 'discard': {
      await device.discard(offset, length);
      // Discard drops whole clusters only; v2 with a backing file cannot drop them (qemu leaves the data).
      if (image.v2 && image.backing) return model;
      const end = offset + length;
      const first = Math.ceil(offset / image.clusterSize) * image.clusterSize;
      const last = end === model.length ? end : Math.floor(end / image.clusterSize) * image.clusterSize;
      if (first < last) model.fill(0, first, last);
      return model;
    }
  }
}

function firstDifference(a: Uint8Array, b: Uint8Array): number {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : a.length;
}
