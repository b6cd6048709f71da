import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import type { WritableBlockDevice } from '../device/block-device.js';
import { Qcow2Device } from '../device/qcow2-device.js';

/**
 * A plain model of a guest disk and the random operations the property tests apply to both the engine and
 * the model: writes, zero writes, discards and resizes, with ranges drawn as fractions of the disk so they stay
 * inside it whatever its size is when they run.
 */
export type Op =
  | { kind: 'resize'; fraction: number }
  | { kind: 'write'; offset: number; length: number; seed: number }
  | { kind: 'zero'; offset: number; length: number; unmap: boolean }
  | { kind: 'discard'; offset: number; length: number };


export function fillPattern(length: number, seed: number): Uint8Array {
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
export function opArb(): fc.Arbitrary<Op> {
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

export function qemuCheck(bytes: Uint8Array, backing: Uint8Array | undefined): { status: number; output: string } {
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

/** Applies `op` to the device and the model; returns the model (a new one when the size changed). */
export async function apply(
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

export function firstDifference(a: Uint8Array, b: Uint8Array): number {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : a.length;
}
