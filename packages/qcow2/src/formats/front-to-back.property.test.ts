import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { hasQemuImg, requireQemuImg } from '../../../../fixtures/corpus.js';
import type { ImageFormat } from '../device/block-device.js';
import { RawDevice } from '../device/raw-device.js';
import { MemoryStorage } from '../io/memory-storage.js';
import { convertToSink } from '../ops/convert-to-sink.js';
import { walkExtents } from '../ops/extent-walk.js';
import { isZero } from '../io/zero-detect.js';
import { firstDifference } from '../test-support/guest-model.js';
import { sparseDiskArb, sparseDiskBytes } from '../test-support/sparse-disk.js';
import { createImageSink, type NewImageOptions } from './create-image-sink.js';
import { nodeCodecs } from '../node/node-codecs.js';
import { openFormatDevice } from './open-format.js';

/**
 * Every front-to-back writer against its reader and against qemu-img: random sparse disks are converted into
 * the format, then read back (every byte, and the extents: whatever is not data must read as zeros); for some
 * of them qemu-img converts the image back to raw (it must equal the disk) and checks it where it can.
 */
interface Variant {
  name: string;
  format: Exclude<ImageFormat, 'raw' | 'qcow2'>;
  options: Record<string, unknown>;
  /** qemu-img check has something to say about this format. */
  qemuChecks: boolean;
}

const variants: Variant[] = [
  { name: 'vpc dynamic', format: 'vpc', options: {}, qemuChecks: false },
  { name: 'vpc dynamic force_size', format: 'vpc', options: { forceSize: true }, qemuChecks: false },
  { name: 'vpc fixed', format: 'vpc', options: { subformat: 'fixed' }, qemuChecks: false },
  { name: 'vpc fixed force_size', format: 'vpc', options: { subformat: 'fixed', forceSize: true }, qemuChecks: false },
  { name: 'vmdk monolithicSparse', format: 'vmdk', options: {}, qemuChecks: true },
  { name: 'vmdk streamOptimized', format: 'vmdk', options: { subformat: 'streamOptimized' }, qemuChecks: true },
  { name: 'vhdx dynamic (1 MiB blocks)', format: 'vhdx', options: { blockSize: 1024 * 1024 }, qemuChecks: true },
  { name: 'vhdx dynamic, NOT_PRESENT blocks', format: 'vhdx', options: { blockStateZero: false }, qemuChecks: true },
  { name: 'vhdx fixed', format: 'vhdx', options: { subformat: 'fixed', blockSize: 2 * 1024 * 1024 }, qemuChecks: true },
];

const MAX_SIZE = 12 * 1024 * 1024;

async function writeImage(variant: Variant, disk: Uint8Array): Promise<Uint8Array> {
  const source = await RawDevice.open(new MemoryStorage(disk.slice()), 'source.raw');
  const out = new MemoryStorage(new Uint8Array(0), { name: 'out' });
  const sink = await createImageSink(out, { ...variant.options, format: variant.format, size: disk.length } as NewImageOptions);
  await convertToSink(source, sink);
  return out.contents().slice();
}

/** What qemu-img makes of the image: its raw contents and check status. */
function qemuReads(variant: Variant, image: Uint8Array): { raw: Uint8Array; check: number } {
  const dir = mkdtempSync(join(tmpdir(), 'qcowkit-formats-prop-'));
  try {
    writeFileSync(join(dir, 'image'), image);
    const convert = spawnSync('qemu-img', ['convert', '-f', variant.format, '-O', 'raw', join(dir, 'image'), join(dir, 'out.raw')], { encoding: 'utf8' });
    if (convert.status !== 0) throw new Error(`qemu-img convert failed: ${convert.stderr}`);
    const check = spawnSync('qemu-img', ['check', '-f', variant.format, join(dir, 'image')], { encoding: 'utf8' });
    return { raw: new Uint8Array(readFileSync(join(dir, 'out.raw'))), check: check.status ?? -1 };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function padded(bytes: Uint8Array, size: number): Uint8Array {
  if (bytes.length === size) return bytes;
  const out = new Uint8Array(size);
  out.set(bytes.subarray(0, size));
  return out;
}

describe('front-to-back writers against their readers and qemu-img', () => {
  requireQemuImg();
  for (const variant of variants) {
    it(`${variant.name}: random sparse disks read back equal, and what is not data reads as zeros`, async () => {
      await fc.assert(
        fc.asyncProperty(sparseDiskArb(MAX_SIZE), async (disk) => {
          const bytes = sparseDiskBytes(disk);
          const image = await writeImage(variant, bytes);
          const device = await openFormatDevice(variant.format, new MemoryStorage(image, { name: 'image' }), 'image', { codecs: nodeCodecs });
          expect(device.size).toBeGreaterThanOrEqual(bytes.length);
          const contents = new Uint8Array(device.size);
          await device.read(contents, 0);
          expect(firstDifference(contents, padded(bytes, device.size))).toBe(-1);
          let covered = 0;
          for await (const extent of walkExtents(device)) {
            expect(extent.offset).toBe(covered);
            covered += extent.length;
            if (extent.kind !== 'data' || extent.zeroData === true) expect(isZero(contents.subarray(extent.offset, extent.offset + extent.length))).toBe(true);
          }
          expect(covered).toBe(device.size);
          await device.close();
        }),
        { numRuns: 40 },
      );
    });

    it.runIf(hasQemuImg())(`${variant.name}: qemu-img reads random sparse disks back equal${variant.qemuChecks ? ' and checks them clean' : ''}`, async () => {
      await fc.assert(
        fc.asyncProperty(sparseDiskArb(MAX_SIZE), async (disk) => {
          const bytes = sparseDiskBytes(disk);
          const { raw, check } = qemuReads(variant, await writeImage(variant, bytes));
          expect(raw.length).toBeGreaterThanOrEqual(bytes.length);
          expect(firstDifference(raw, padded(bytes, raw.length))).toBe(-1);
          expect(check).toBe(variant.qemuChecks ? 0 : 63);
        }),
        { numRuns: 15 },
      );
    });
  }
});
