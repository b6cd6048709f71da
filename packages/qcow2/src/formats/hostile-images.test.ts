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
import { nodeCodecs } from '../node/node-codecs.js';
import { openFormatDevice, type FormatOpenContext } from './open-format.js';
import { MemoryFiles } from '../test-support/memory-files.js';
import { untrustedGate } from '../device/open-policy.js';
import { zlibSync } from 'fflate';
import { vhdChecksum } from './vpc/footer.js';
import { decodeHeader, encodeHeader, encodeRegionTable, HEADER_OFFSETS, REGION_TABLE_OFFSETS, type RegionEntry } from './vhdx/header-section.js';
import { crc32c } from './vhdx/crc32c.js';
import { BAT_REGION, METADATA_REGION, randomGuid } from './vhdx/guid.js';
import { logEntry, withLog } from '../test-support/vhdx-log-entry.js';

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
async function openAndRead(format: CloudFormat, bytes: Uint8Array, context: FormatOpenContext = {}): Promise<void> {
  const device = await openFormatDevice(format, new MemoryStorage(bytes, { name: 'image', readOnly: true }), 'image', { codecs: nodeCodecs, ...context });
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

async function expectTypedError(format: CloudFormat, bytes: Uint8Array, code: string | RegExp, context: FormatOpenContext = {}): Promise<void> {
  const started = Date.now();
  const error = await openAndRead(format, bytes, context).then(
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
    ['dynamic truncated inside the BAT', async () => (await dynamic).subarray(0, BAT + 8), 'BAD_ALLOCATION_TABLE'],
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
    ['BAT offset past the end', async () => patched(await dynamic, (v) => v.setUint32(512 + 20, 0x7ffffff0)), 'BAD_ALLOCATION_TABLE'],
    ['an unused BAT entry (past the disk) pointing past the end, as qemu checks them all', async () => patched(await dynamic, (v) => { v.setUint32(512 + 28, 5); v.setUint32(BAT + 16, 0x00ffffff); }), 'BAD_ALLOCATION_TABLE'],
    ['a footer only at the end that is not a fixed disk\'s', async () => patched(await fixed, (v, b) => { v.setUint32(b.length - 512 + 60, 3); resealVhdFooter(v, b, b.length - 512); }), 'BAD_MAGIC'],
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

// --- VMDK --------------------------------------------------------------------------------------------------

const VMDK_SIZE = 8 * 1024 * 1024;
const text = (t: string): Uint8Array => new TextEncoder().encode(t);

function descriptor(createType: string, extentLines: string, extra = ''): Uint8Array {
  return text(`# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n${extra}createType="${createType}"\n\n# Extent description\n${extentLines}\n`);
}

/** Little-endian u32 at `offset`. */
function setU32(view: DataView, offset: number, value: number): void {
  view.setUint32(offset, value, true);
}

describe('hostile VMDK images', () => {
  const sparse = validImage({ format: 'vmdk', size: VMDK_SIZE });
  const stream = validImage({ format: 'vmdk', size: VMDK_SIZE, subformat: 'streamOptimized' });
  const files = new MemoryFiles();
  files.add('flat.bin', new Uint8Array(VMDK_SIZE).fill(7));

  it('the unpatched images open and read (the cases below fail for their patch)', async () => {
    await openAndRead('vmdk', await sparse);
    await openAndRead('vmdk', await stream);
    await openAndRead('vmdk', descriptor('monolithicFlat', `RW ${VMDK_SIZE / 512} FLAT "flat.bin" 0`), { hostFiles: files });
  });

  /** The sector of the first allocated grain of the monolithic sparse image (from its first grain table). */
  async function firstGrainSector(bytes: Uint8Array): Promise<number> {
    const view = new DataView(bytes.buffer, bytes.byteOffset);
    const gd = Number(view.getBigUint64(56, true));
    const gt = view.getUint32(gd * 512, true);
    return view.getUint32(gt * 512, true);
  }

  /** The sector of the stream image's first grain marker (its grains start at sector 128). */
  const STREAM_GRAIN = 128 * 512;

  const cases: Array<[string, () => Promise<Uint8Array>, string | RegExp, FormatOpenContext?]> = [
    ['three bytes', async () => text('KDM'), 'TRUNCATED'],
    ['garbage', async () => new Uint8Array(4096).fill(0x5a), 'BAD_HEADER'],
    ['header only (truncated before the grains)', async () => (await sparse).subarray(0, 512), 'TRUNCATED'],
    ['version 4', async () => patched(await sparse, (v) => setU32(v, 4, 4)), 'UNSUPPORTED_VERSION'],
    ['1024 entries per grain table', async () => patched(await sparse, (v) => setU32(v, 44, 1024)), 'BAD_HEADER'],
    ['grain size 0', async () => patched(await sparse, (v) => setU32(v, 20, 0)), 'BAD_HEADER'],
    ['grain size 2 GiB', async () => patched(await sparse, (v) => setU32(v, 20, 0x400000)), 'BAD_HEADER'],
    ['capacity past 2^53 bytes', async () => patched(await sparse, (v) => { setU32(v, 12, 0); setU32(v, 16, 0x100000); }), 'OFFSET_TOO_LARGE'],
    ['a grain directory of 2^32 entries', async () => patched(await sparse, (v) => { setU32(v, 12, 0xffffffff); setU32(v, 16, 0x3ff); setU32(v, 20, 1); setU32(v, 44, 1); }), 'BAD_ALLOCATION_TABLE'],
    ['COWD (VMDK3)', async () => patched(await sparse, (v) => setU32(v, 0, 0x434f5744)), 'UNSUPPORTED_FEATURE'],
    ['no CID in the embedded descriptor', async () => patched(await sparse, (_v, b) => b.fill(0x20, 512, 1024)), 'BAD_HEADER'],
    ['stream footer marker damaged', async () => patched(await stream, (v, b) => setU32(v, b.length - 1536 + 12, 7)), 'BAD_HEADER'],
    ['stream end-of-stream marker missing', async () => (await stream).subarray(0, (await stream).length - 512), 'BAD_HEADER'],
    ['compressed grain of length 0', async () => patched(await stream, (v) => setU32(v, STREAM_GRAIN + 8, 0)), 'COMPRESSION_ERROR'],
    ['compressed grain of length 1 GiB', async () => patched(await stream, (v) => setU32(v, STREAM_GRAIN + 8, 0x40000000)), 'COMPRESSION_ERROR'],
    ['compressed grain that is not zlib', async () => patched(await stream, (_v, b) => b.fill(0xee, STREAM_GRAIN + 12, STREAM_GRAIN + 40)), 'COMPRESSION_ERROR'],
    [
      'compressed grain that inflates to 16 MiB (a zip bomb)',
      async () =>
        patched(await stream, (v, b) => {
          const bomb = zlibSync(new Uint8Array(16 * 1024 * 1024));
          setU32(v, STREAM_GRAIN + 8, bomb.length);
          b.set(bomb, STREAM_GRAIN + 12);
        }),
      'COMPRESSION_ERROR',
    ],
    ['grain table entry past the end of the file (reads as zeros, as in qemu)', async () => patched(await sparse, () => {}), 'none'],
    ['descriptor without createType', async () => text('version=1\nCID=1\nparentCID=ffffffff\n'), 'BAD_HEADER'],
    ['descriptor of an unknown type', async () => descriptor('fancySparse', 'RW 16 FLAT "flat.bin" 0'), 'UNSUPPORTED_FEATURE', { hostFiles: files }],
    ['descriptor naming a missing extent', async () => descriptor('monolithicFlat', 'RW 16 FLAT "missing.bin" 0'), 'IO_ERROR', { hostFiles: files }],
    ['descriptor of a delta disk', async () => descriptor('monolithicFlat', 'RW 16 FLAT "flat.bin" 0', 'parentFileNameHint="base.vmdk"\n'), 'UNSUPPORTED_FEATURE', { hostFiles: files }],
    ['descriptor listing 5000 extents', async () => descriptor('monolithicFlat', 'RW 1 FLAT "flat.bin" 0\n'.repeat(5000)), 'BAD_HEADER', { hostFiles: files }],
    ['descriptor with a FLAT line without offset', async () => descriptor('monolithicFlat', 'RW 16 FLAT "flat.bin"'), 'BAD_HEADER', { hostFiles: files }],
    ['descriptor whose SPARSE extent is not a VMDK', async () => descriptor('twoGbMaxExtentSparse', 'RW 16 SPARSE "flat.bin"'), 'BAD_MAGIC', { hostFiles: files }],
    ['descriptor naming /etc/passwd, opened untrusted', async () => descriptor('monolithicFlat', 'RW 16 FLAT "/etc/passwd" 0'), 'UNTRUSTED_REFERENCE', { hostFiles: files, gate: untrustedGate }],
  ];
  for (const [name, make, code, context] of cases) {
    it(`${name}: ${code}`, async () => {
      const bytes = await make();
      if (code === 'none') {
        // Point the first grain past the end of the file: qemu reads zeros there; check calls it corrupt.
        const grain = await firstGrainSector(bytes);
        const view = new DataView(bytes.buffer, bytes.byteOffset);
        const gd = Number(view.getBigUint64(56, true));
        setU32(view, view.getUint32(gd * 512, true) * 512, 0x7fffff00);
        expect(grain).toBeGreaterThan(0);
        await openAndRead('vmdk', bytes);
        return;
      }
      await expectTypedError('vmdk', bytes, code, context ?? {});
    });
  }

  it('random corruption of the header, descriptor and tables gives a Qcow2Error or a readable disk, never anything else', async () => {
    for (const image of [await sparse, await stream]) {
      await fc.assert(
        fc.asyncProperty(fc.array(fc.tuple(fc.integer({ min: 0, max: 80 * 1024 }), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 8 }), async (flips) => {
          const bytes = patched(image, (_v, b) => {
            for (const [at, value] of flips) if (at < b.length) b[at] = value;
          });
          await openAndRead('vmdk', bytes).catch((error: unknown) => {
            expect(error).toBeInstanceOf(Qcow2Error);
          });
        }),
        { numRuns: 300 },
      );
    }
  });
});

// --- VHDX --------------------------------------------------------------------------------------------------

const MiB = 1024 * 1024;
const VHDX_SIZE = 8 * MiB;
/** Where the layout of a new 8 MiB VHDX with 1 MiB blocks and a 1 MiB log puts things. */
const LOG = MiB;
const VHDX_BAT = 2 * MiB;
const VHDX_METADATA = 3 * MiB;

/** Rewrites both headers after `change`, with good checksums. */
function headers(bytes: Uint8Array, change: (h: NonNullable<ReturnType<typeof decodeHeader>>, i: number) => void): Uint8Array {
  const out = bytes.slice();
  HEADER_OFFSETS.forEach((offset, i) => {
    const header = decodeHeader(out.subarray(offset, offset + 4096))!;
    change(header, i);
    out.set(encodeHeader(header), offset);
  });
  return out;
}

/** Rewrites the region table (both copies) with these entries. */
function regions(bytes: Uint8Array, entries: RegionEntry[]): Uint8Array {
  const out = bytes.slice();
  for (const offset of REGION_TABLE_OFFSETS) out.set(encodeRegionTable(entries), offset);
  return out;
}

const standardRegions = (): RegionEntry[] => [
  { guid: BAT_REGION, fileOffset: VHDX_BAT, length: MiB, required: true },
  { guid: METADATA_REGION, fileOffset: VHDX_METADATA, length: MiB, required: true },
];

/** Patches the metadata region's table (and nothing checks a checksum there: there is none). */
function metadataPatch(bytes: Uint8Array, patch: (view: DataView, at: number) => void): Uint8Array {
  return patched(bytes, (v) => patch(v, VHDX_METADATA));
}

/** Sets BAT entry `index` (little-endian u64 halves). */
function batEntry(bytes: Uint8Array, index: number, lo: number, hi = 0): Uint8Array {
  return patched(bytes, (v) => {
    v.setUint32(VHDX_BAT + index * 8, lo >>> 0, true);
    v.setUint32(VHDX_BAT + index * 8 + 4, hi, true);
  });
}

describe('hostile VHDX images', () => {
  const dynamic = validImage({ format: 'vhdx', size: VHDX_SIZE, blockSize: MiB });

  it('the unpatched image opens and reads (the cases below fail for their patch)', async () => {
    await openAndRead('vhdx', await dynamic);
    // The layout the cases assume.
    const bytes = await dynamic;
    expect(new DataView(bytes.buffer).getUint32(VHDX_BAT, true) & 7).toBe(6);
  });

  const sector = (fill: number): Uint8Array => new Uint8Array(4096).fill(fill);
  const cases: Array<[string, () => Promise<Uint8Array>, string]> = [
    ['no signature', async () => patched(await dynamic, (_v, b) => b.fill(0, 0, 8)), 'BAD_MAGIC'],
    ['truncated inside the header section', async () => (await dynamic).subarray(0, 100 * 1024), 'TRUNCATED'],
    ['both headers with bad checksums', async () => patched(await dynamic, (v) => { v.setUint32(64 * 1024 + 4, 1, true); v.setUint32(128 * 1024 + 4, 1, true); }), 'BAD_HEADER'],
    ['two different headers with one sequence number', async () => headers(await dynamic, (h, i) => { h.sequenceNumber = 7; h.logLength = i === 0 ? MiB : 2 * MiB; }), 'BAD_HEADER'],
    ['log offset not MiB-aligned', async () => headers(await dynamic, (h) => { h.logOffset = MiB + 4096; }), 'BAD_HEADER'],
    ['log version 1', async () => headers(await dynamic, (h) => { h.logVersion = 1; }), 'BAD_HEADER'],
    ['region table checksum wrong', async () => patched(await dynamic, (v) => v.setUint32(192 * 1024 + 4, 5, true)), 'BAD_CHECKSUM'],
    ['region table with 5000 entries', async () => patched(await dynamic, (v, b) => { v.setUint32(192 * 1024 + 8, 5000, true); v.setUint32(192 * 1024 + 4, crc32c(b.subarray(192 * 1024, 256 * 1024), 4), true); }), 'BAD_HEADER'],
    ['BAT over the metadata region', async () => regions(await dynamic, [{ guid: BAT_REGION, fileOffset: VHDX_METADATA, length: MiB, required: true }, { guid: METADATA_REGION, fileOffset: VHDX_METADATA, length: MiB, required: true }]), 'BAD_HEADER'],
    ['region over the log', async () => regions(await dynamic, [...standardRegions(), { guid: randomGuid(), fileOffset: LOG, length: 4096, required: false }]), 'BAD_HEADER'],
    ['no BAT region', async () => regions(await dynamic, standardRegions().slice(1)), 'BAD_HEADER'],
    ['an unknown required region', async () => regions(await dynamic, [...standardRegions(), { guid: randomGuid(), fileOffset: 7 * MiB, length: MiB, required: true }]), 'UNSUPPORTED_FEATURE'],
    ['BAT region too small', async () => regions(await dynamic, [{ ...standardRegions()[0]!, length: 8 }, standardRegions()[1]!]), 'BAD_ALLOCATION_TABLE'],
    ['metadata region past the end', async () => regions(await dynamic, [standardRegions()[0]!, { ...standardRegions()[1]!, fileOffset: 1024 * MiB }]), 'TRUNCATED'],
    ['metadata signature wrong', async () => metadataPatch(await dynamic, (v, at) => v.setUint32(at, 0, true)), 'BAD_HEADER'],
    ['metadata item twice', async () => metadataPatch(await dynamic, (_v, at) => { const b = new Uint8Array(_v.buffer); b.copyWithin(at + 64, at + 32, at + 48); }), 'BAD_HEADER'],
    ['metadata item outside the region', async () => metadataPatch(await dynamic, (v, at) => v.setUint32(at + 32 + 16, 0x7fffffff, true)), 'BAD_HEADER'],
    ['differencing (has a parent)', async () => metadataPatch(await dynamic, (v, at) => v.setUint32(at + 65536 + 4, 2, true)), 'UNSUPPORTED_FEATURE'],
    ['block size 3 MiB', async () => metadataPatch(await dynamic, (v, at) => v.setUint32(at + 65536, 3 * MiB, true)), 'BAD_HEADER'],
    ['logical sector size 1024', async () => metadataPatch(await dynamic, (v, at) => v.setUint32(at + 65536 + 32, 1024, true)), 'BAD_HEADER'],
    ['virtual size 64 TiB with 1 MiB blocks (a BAT of 64 Mi entries)', async () => metadataPatch(await dynamic, (v, at) => { v.setUint32(at + 65536 + 8, 0, true); v.setUint32(at + 65536 + 12, 0x4000, true); }), 'BAD_ALLOCATION_TABLE'],
    ['BAT entry past the end of the file', async () => batEntry(await dynamic, 0, (0x7ff << 20) | 6), 'BAD_ALLOCATION_TABLE'],
    ['BAT entry offset above 2^53', async () => batEntry(await dynamic, 0, 6, 0x7fffffff), 'BAD_ALLOCATION_TABLE'],
    ['BAT entry over the metadata region', async () => batEntry(await dynamic, 0, (3 << 20) | 6), 'BAD_ALLOCATION_TABLE'],
    ['block partially present (differencing only)', async () => batEntry(await dynamic, 1, 7), 'UNSUPPORTED_FEATURE'],
    [
      'a log entry to replay',
      async () => {
        const guid = randomGuid();
        return withLog(await dynamic, guid, logEntry({ logGuid: guid, sequence: 5, writes: [{ fileOffset: VHDX_BAT, sector: sector(0) }], flushedFileOffset: VHDX_SIZE, lastFileOffset: VHDX_SIZE }));
      },
      'LOG_REPLAY_NEEDED',
    ],
    [
      'a log entry whose descriptor has another sequence number',
      async () => {
        const guid = randomGuid();
        const entry = logEntry({ logGuid: guid, sequence: 5, writes: [{ fileOffset: VHDX_BAT, sector: sector(0) }], flushedFileOffset: VHDX_SIZE, lastFileOffset: VHDX_SIZE });
        new DataView(entry.buffer).setUint32(64 + 24, 6, true);
        return withLog(await dynamic, guid, entry);
      },
      'BAD_HEADER',
    ],
  ];
  for (const [name, make, code] of cases) {
    it(`${name}: ${code}`, async () => {
      await expectTypedError('vhdx', await make(), code);
    });
  }

  it('a log GUID with no valid entry (a checksum off): nothing to replay, the image opens', async () => {
    const guid = randomGuid();
    const entry = logEntry({ logGuid: guid, sequence: 5, writes: [{ fileOffset: VHDX_BAT, sector: sector(0) }], flushedFileOffset: VHDX_SIZE, lastFileOffset: VHDX_SIZE });
    entry[4] = entry[4]! ^ 1;
    await openAndRead('vhdx', withLog(await dynamic, guid, entry));
  });

  it('random corruption of the header section, BAT and metadata gives a Qcow2Error or a readable disk, never anything else', async () => {
    const image = await dynamic;
    const interesting = [64 * 1024, 128 * 1024, 192 * 1024, VHDX_BAT, VHDX_METADATA, VHDX_METADATA + 65536];
    await fc.assert(
      fc.asyncProperty(fc.array(fc.tuple(fc.constantFrom(...interesting), fc.integer({ min: 0, max: 200 }), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 6 }), async (flips) => {
        const bytes = patched(image, (_v, b) => {
          for (const [base, at, value] of flips) b[base + at] = value;
        });
        await openAndRead('vhdx', bytes).catch((error: unknown) => {
          expect(error).toBeInstanceOf(Qcow2Error);
        });
      }),
      { numRuns: 300 },
    );
  });
});
