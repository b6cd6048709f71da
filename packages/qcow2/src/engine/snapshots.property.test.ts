import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { hasQemuImg, requireQemuImg } from '../../../../fixtures/corpus.js';
import { Qcow2Device } from '../device/qcow2-device.js';
import { openImage } from '../device/open-image.js';
import { createQcow2, type CreateQcow2Options } from './create-image.js';
import { MemoryFiles } from '../test-support/memory-files.js';
import { apply, firstDifference, opArb, qemuCheck, type Op } from '../test-support/guest-model.js';

/**
 * Internal snapshots against a model that keeps every snapshot's contents: random interleavings of guest
 * operations (writes, zero writes, discards, resizes) and snapshot create / apply / delete. After each run the
 * active disk and every snapshot's view equal the model, and qemu-img check calls the image clean.
 */
type SnapshotOp = { kind: 'snapshot-create' } | { kind: 'snapshot-apply'; pick: number } | { kind: 'snapshot-delete'; pick: number };
type AnyOp = Op | SnapshotOp;

const anyOpArb: fc.Arbitrary<AnyOp> = fc.oneof(
  { weight: 6, arbitrary: opArb() },
  { weight: 2, arbitrary: fc.constant({ kind: 'snapshot-create' as const }) },
  { weight: 1, arbitrary: fc.nat().map((pick) => ({ kind: 'snapshot-apply' as const, pick })) },
  { weight: 1, arbitrary: fc.nat().map((pick) => ({ kind: 'snapshot-delete' as const, pick })) },
);

const variants: Array<{ name: string; create: Omit<CreateQcow2Options, 'size'>; size: number }> = [
  { name: 'default v3', create: {}, size: 2 * 1024 * 1024 + 1536 },
  { name: 'v2', create: { compat: '0.10' }, size: 2 * 1024 * 1024 },
  { name: '512-byte clusters, 2-bit refcounts', create: { clusterSize: 512, refcountBits: 2 }, size: 512 * 1024 },
  { name: 'extended L2', create: { extendedL2: true, clusterSize: 16384 }, size: 1024 * 1024 },
];

describe('internal snapshots against a model', () => {
  requireQemuImg();
  for (const variant of variants) {
    it(`${variant.name}: active disk and every snapshot equal the model; qemu-img check clean`, async () => {
      await fc.assert(
        fc.asyncProperty(fc.array(anyOpArb, { minLength: 1, maxLength: 16 }), async (ops) => {
          const files = new MemoryFiles();
          const image = files.add('disk.qcow2');
          await createQcow2(image, { ...variant.create, size: variant.size });
          const device = await openImage('disk.qcow2', { hostFiles: files, writable: true });
          if (!(device instanceof Qcow2Device)) throw new Error('not qcow2');
          let model: Uint8Array = new Uint8Array(variant.size);
          const saved = new Map<string, Uint8Array>(); // snapshot id -> contents
          const clusterSize = variant.create.clusterSize ?? 65536;
          const v2 = variant.create.compat === '0.10';
          for (const op of ops) {
            const ids = device.image.snapshots.map((s) => s.id);
            if (op.kind === 'snapshot-create') {
              try {
                const entry = await device.createSnapshot({ name: `s${ids.length}` });
                saved.set(entry.id, model.slice());
              } catch (error) {
                // Narrow refcounts run out of room once clusters are shared: a clean refusal is allowed.
                expect((error as Error).message).toContain('overflow');
              }
            } else if (op.kind === 'snapshot-apply') {
              if (ids.length === 0) continue;
              const id = ids[op.pick % ids.length]!;
              try {
                await device.applySnapshot(id);
                model = saved.get(id)!.slice();
              } catch (error) {
                expect((error as Error).message).toContain('overflow');
              }
            } else if (op.kind === 'snapshot-delete') {
              if (ids.length === 0) continue;
              const id = ids[op.pick % ids.length]!;
              await device.deleteSnapshot(id);
              saved.delete(id);
            } else {
              try {
                model = await apply(device, model, op, { clusterSize, v2, backing: false });
              } catch (error) {
                // A copy-on-write that would overflow a narrow refcount is refused, and changes nothing.
                expect((error as Error).message).toContain('overflow');
              }
            }
          }
          const actual = new Uint8Array(device.size);
          await device.read(actual, 0);
          expect(device.size).toBe(model.length);
          expect(firstDifference(actual, model)).toBe(-1);
          for (const entry of device.image.snapshots) {
            const view = await device.snapshotView(entry);
            const expected = saved.get(entry.id)!;
            const contents = new Uint8Array(view.size);
            await view.read(contents, 0);
            // A view has the current disk size: compare what the snapshot had; the rest reads zeros.
            expect(firstDifference(contents.subarray(0, Math.min(expected.length, contents.length)), expected.subarray(0, Math.min(expected.length, contents.length)))).toBe(-1);
          }
          await device.close();
          if (hasQemuImg()) {
            const check = qemuCheck(image.contents(), undefined);
            expect(check.output).toContain('No errors were found on the image.');
          }
        }),
        { numRuns: 20 },
      );
    }, 300_000);
  }
});
