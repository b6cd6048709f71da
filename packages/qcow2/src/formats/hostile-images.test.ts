import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { ImageFormat } from '../device/block-device.js';
import { RawDevice } from '../device/raw-device.js';
import { Qcow2Error } from '../errors.js';
import { MemoryStorage } from '../io/memory-storage.js';
import { convertToSink } from '../ops/convert-to-sink.js';
import { walkExtents } from '../ops/extent-walk.js';
import { fillPattern } from '../test-support/guest-model.js';
import { createImageSink, type NewImageOptions } from './create-image-sink.js';
import { openFormatDevice } from './open-format.js';
import { vhdChecksum } from './vpc/footer.js';

/**
 * Broken and hostile images of the front-to-back formats: truncated files, bad checksums, tables pointing
 * outside the file or asking for absurd sizes. Opening or reading one must give a typed Qcow2Error with a
 * one-line message, quickly, without allocating what the image asks for; random corruption of the metadata
 * must never produce anything but a Qcow2Error (or a device that reads).
 */
type CloudFormat = Exclude<ImageFormat, 'raw' | 'qcow2'>;

async function validImage(options: NewImageOptions, dataAt: number[] = [0, 3 * 1024 * 1024]): Promise<Uint8Array> {
  const disk = new Uint8Array(options.size);
  for (const at of dataAt) disk.set(fillPattern(Math.min(65536, options.size - at), at + 1), at);
  const out = new MemoryStorage(new Uint8Array(0), { name: 'image' });
  await convertToSink(await RawDevice.open(new MemoryStorage(disk)), await createImageSink(out, options));
  return out.contents().slice();
}

/** Opens the image and reads all of it and its extents; resolves when it is fine, rejects with what failed. */
async function openAndRead(format: CloudFormat, bytes: Uint8Array): Promise<void> {
  const device = await openFormatDevice(format, new MemoryStorage(bytes, { name: 'image', readOnly: true }), 'image');
  try {
    // The first 16 MiB and the last MiB (a corrupted size may be huge; reading all of it proves nothing more).
    const chunk = new Uint8Array(1024 * 1024);
    const ranges = [0, device.size - chunk.length].filter((at) => at >= 0);
    for (const start of ranges) {
      for (let at = start; at < Math.min(device.size, start + 16 * chunk.length); at += chunk.length) {
        await device.read(chunk.subarray(0, Math.min(chunk.length, device.size - at)), at);
      }
    }
    for await (const _extent of walkExtents(device)) {
      // walking them is the test
    }
  } finally {
    await device.close();
  }
}

async function expectTypedError(format: CloudFormat, bytes: Uint8Array, code: string | RegExp): Promise<void> {
  const started = Date.now();
  const error = await openAndRead(format, bytes).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(Qcow2Error);
  const typed = error as Qcow2Error;
  if (typeof code === 'string') expect(typed.code).toBe(code);
  else expect(typed.code).toMatch(code);
  expect(typed.message).not.toContain('\n');
  expect(Date.now() - started).toBeLessThan(5000);
}

function patched(bytes: Uint8Array, patch: (view: DataView, bytes: Uint8Array) => void): Uint8Array {
  const copy = bytes.slice();
  patch(new DataView(copy.buffer), copy);
  return copy;
}

// --- VHD ---------------------------------------------------------------------------------------------------

/** Re-seals a VHD footer at `offset` after a patch, so the patch itself is what the reader meets. */
function resealVhdFooter(view: DataView, bytes: Uint8Array, offset: number): void {
  view.setUint32(offset + 64, vhdChecksum(bytes.subarray(offset, offset + 512), 64));
}

const VHD_SIZE = 8 * 1024 * 1024;
const BAT = 1536;

describe('hostile VHD images', () => {
  const dynamic = validImage({ format: 'vpc', size: VHD_SIZE });
  const fixed = validImage({ format: 'vpc', size: VHD_SIZE, subformat: 'fixed' });

  it('the unpatched images open and read (the cases below fail for their patch)', async () => {
    await openAndRead('vpc', await dynamic);
    await openAndRead('vpc', await fixed);
  });

  const cases: Array<[string, () => Promise<Uint8Array>, string | RegExp]> = [
    ['empty file', async () => new Uint8Array(0), 'TRUNCATED'],
    ['garbage', async () => new Uint8Array(4096).fill(0x5a), 'BAD_MAGIC'],
    ['dynamic truncated inside the BAT', async () => (await dynamic).subarray(0, BAT + 8), 'TRUNCATED'],
    ['dynamic truncated inside a block', async () => (await dynamic).subarray(0, 3 * 1024 * 1024), 'BAD_ALLOCATION_TABLE'],
    ['footer checksum wrong', async () => patched(await dynamic, (v) => v.setUint32(64, v.getUint32(64) ^ 1)), 'BAD_CHECKSUM'],
    ['fixed footer checksum wrong', async () => patched(await fixed, (v, b) => v.setUint32(b.length - 512 + 64, 1)), 'BAD_CHECKSUM'],
    ['dynamic header offset past the end', async () => patched(await dynamic, (v, b) => { v.setUint32(20, 0x7fffff00); resealVhdFooter(v, b, 0); }), 'TRUNCATED'],
    ['dynamic header offset above 2^53', async () => patched(await dynamic, (v, b) => { v.setUint32(16, 0x7fffffff); resealVhdFooter(v, b, 0); }), 'OFFSET_TOO_LARGE'],
    ['no dynamic header cookie', async () => patched(await dynamic, (_v, b) => b.fill(0, 512, 520)), 'BAD_MAGIC'],
    ['block size not a power of two', async () => patched(await dynamic, (v) => v.setUint32(512 + 32, 3 * 1024 * 1024)), 'BAD_HEADER'],
    ['block size zero', async () => patched(await dynamic, (v) => v.setUint32(512 + 32, 0)), 'BAD_HEADER'],
    ['BAT too small for the disk', async () => patched(await dynamic, (v) => v.setUint32(512 + 28, 1)), 'BAD_ALLOCATION_TABLE'],
    ['BAT entry past the end of the file', async () => patched(await dynamic, (v) => v.setUint32(BAT, 0x00ffffff)), 'BAD_ALLOCATION_TABLE'],
    ['BAT entry 0xfffffffe', async () => patched(await dynamic, (v) => v.setUint32(BAT + 4, 0xfffffffe)), 'BAD_ALLOCATION_TABLE'],
    ['BAT offset past the end', async () => patched(await dynamic, (v) => v.setUint32(512 + 20, 0x7ffffff0)), 'TRUNCATED'],
    [
      '2 TiB disk of 512-byte blocks (a BAT of 4 Gi entries)',
      async () =>
        patched(await dynamic, (v, b) => {
          v.setUint32(512 + 32, 512);
          v.setUint32(512 + 28, 0x7fffffff);
          b.set([0x71, 0x65, 0x6d, 0x32], 28); // "qem2": sized by current_size
          v.setUint32(48, 0x1fe);
          v.setUint32(52, 0);
          resealVhdFooter(v, b, 0);
        }),
      'BAD_ALLOCATION_TABLE',
    ],
    [
      'disk larger than 2040 GiB',
      async () =>
        patched(await dynamic, (v, b) => {
          b.set([0x71, 0x65, 0x6d, 0x32], 28);
          v.setUint32(48, 0x10000);
          resealVhdFooter(v, b, 0);
        }),
      'UNSUPPORTED_FEATURE',
    ],
    ['differencing disk', async () => patched(await dynamic, (v, b) => { v.setUint32(60, 4); resealVhdFooter(v, b, 0); }), 'UNSUPPORTED_FEATURE'],
  ];
  for (const [name, make, code] of cases) {
    it(`${name}: ${code}`, async () => {
      await expectTypedError('vpc', await make(), code);
    });
  }

  it('random corruption of the footer, header and BAT gives a Qcow2Error or a readable disk, never anything else', async () => {
    const image = await dynamic;
    await fc.assert(
      fc.asyncProperty(fc.array(fc.tuple(fc.integer({ min: 0, max: BAT + 64 }), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 8 }), fc.boolean(), async (flips, reseal) => {
        const bytes = patched(image, (v, b) => {
          for (const [at, value] of flips) b[at] = value;
          if (reseal) resealVhdFooter(v, b, 0);
        });
        await openAndRead('vpc', bytes).catch((error: unknown) => {
          expect(error).toBeInstanceOf(Qcow2Error);
        });
      }),
      { numRuns: 300 },
    );
  });
});
