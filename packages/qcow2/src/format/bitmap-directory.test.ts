import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { hasQemuImg, qemuImg, requireQemuImg } from '../../../../fixtures/corpus.js';
import { Qcow2Error } from '../errors.js';
import {
  BITMAP_DIRECTORY_ENTRY_FIXED_BYTES,
  BitmapFlag,
  MAX_BITMAP_DIRECTORY_BYTES,
  bitmapDirectoryEntrySize,
  checkBitmapEntryConstraints,
  checkBitmapsExtension,
  decodeBitmapDirectory,
  decodeBitmapsExtension,
  encodeBitmapDirectory,
  hasBitmapFlag,
  type BitmapDirectoryEntry,
} from './bitmap-directory.js';
import { HeaderExtensionType } from './constants.js';
import { findExtension, type BitmapsExtensionFields } from './header-extensions.js';
import { decodeHeader } from './header.js';

requireQemuImg();

function entry(patch: Partial<BitmapDirectoryEntry> = {}): BitmapDirectoryEntry {
  return {
    bitmapTableOffset: 0x60000,
    bitmapTableSize: 1,
    flags: 1 << BitmapFlag.Auto,
    type: 1,
    granularityBits: 16,
    name: 'b1',
    extraData: new Uint8Array(0),
    ...patch,
  };
}

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (error) {
    expect(error).toBeInstanceOf(Qcow2Error);
    expect((error as Qcow2Error).message).not.toContain('\n');
    return (error as Qcow2Error).code;
  }
  return undefined;
}

function messageOf(fn: () => unknown): string {
  try {
    fn();
  } catch (error) {
    return (error as Error).message;
  }
  return '';
}

describe('bitmap directory codec', () => {
  it('round-trips entries, extra data, multi-byte names and padding', () => {
    const entries = [
      entry(),
      entry({ name: 'b é 😀', flags: 0b111, granularityBits: 20, bitmapTableOffset: 2 ** 40, bitmapTableSize: 7 }),
      entry({ name: '', extraData: new Uint8Array([1, 2, 3]) }),
      entry({ name: 'x'.repeat(1023), type: 9 }),
    ];
    const bytes = encodeBitmapDirectory(entries);
    expect(bytes.length % 8).toBe(0);
    expect(bytes.length).toBe(
      entries.reduce((sum, e) => sum + bitmapDirectoryEntrySize(new TextEncoder().encode(e.name).length, e.extraData.length), 0),
    );
    expect(decodeBitmapDirectory(bytes, entries.length)).toEqual(entries);
  });

  it('lays an entry out as the spec says', () => {
    const bytes = encodeBitmapDirectory([entry({ name: 'ab', flags: 3, extraData: new Uint8Array([0xee]) })]);
    const view = new DataView(bytes.buffer);
    expect(bytes.length).toBe(32); // 24 + 1 extra + 2 name = 27, padded to 32
    expect(view.getUint32(0)).toBe(0);
    expect(view.getUint32(4)).toBe(0x60000);
    expect(view.getUint32(8)).toBe(1);
    expect(view.getUint32(12)).toBe(3);
    expect(bytes[16]).toBe(1);
    expect(bytes[17]).toBe(16);
    expect(view.getUint16(18)).toBe(2);
    expect(view.getUint32(20)).toBe(1);
    expect(bytes[24]).toBe(0xee);
    expect(new TextDecoder().decode(bytes.subarray(25, 27))).toBe('ab');
    expect([...bytes.subarray(27)]).toEqual([0, 0, 0, 0, 0]);
  });

  it('names flags', () => {
    expect(hasBitmapFlag(0b001, BitmapFlag.InUse)).toBe(true);
    expect(hasBitmapFlag(0b010, BitmapFlag.Auto)).toBe(true);
    expect(hasBitmapFlag(0b100, BitmapFlag.ExtraDataCompatible)).toBe(true);
    expect(hasBitmapFlag(0b011, BitmapFlag.ExtraDataCompatible)).toBe(false);
  });

  it('refuses a directory that does not hold exactly nb_bitmaps whole entries', () => {
    const two = encodeBitmapDirectory([entry(), entry({ name: 'second' })]);
    expect(codeOf(() => decodeBitmapDirectory(two, 1))).toBe('BAD_BITMAP_DIRECTORY');
    expect(messageOf(() => decodeBitmapDirectory(two, 1))).toBe('More bitmaps found than specified in header extension');
    expect(messageOf(() => decodeBitmapDirectory(two, 3))).toBe('Less bitmaps found than specified in header extension');
    // A directory size that cuts an entry (header, name, or padding) short.
    expect(messageOf(() => decodeBitmapDirectory(two.subarray(0, 40), 2))).toBe('Broken bitmap directory');
    expect(messageOf(() => decodeBitmapDirectory(two.subarray(0, 60), 2))).toBe('Broken bitmap directory');
    // Trailing bytes after the last entry.
    const padded = new Uint8Array(two.length + 8);
    padded.set(two);
    expect(messageOf(() => decodeBitmapDirectory(padded, 2))).toBe('Broken bitmap directory');
    expect(messageOf(() => decodeBitmapDirectory(new Uint8Array(0), 0))).toBe('Requested bitmap directory size is zero');
  });

  it('keeps names and extra data inside the buffer even when sizes are hostile', () => {
    const bytes = encodeBitmapDirectory([entry()]);
    const view = new DataView(bytes.buffer);
    view.setUint16(18, 0xffff); // name_size far past the end
    expect(codeOf(() => decodeBitmapDirectory(bytes, 1))).toBe('BAD_BITMAP_DIRECTORY');
    view.setUint16(18, 2);
    view.setUint32(20, 0xffffffff); // extra_data_size far past the end
    expect(codeOf(() => decodeBitmapDirectory(bytes, 1))).toBe('BAD_BITMAP_DIRECTORY');
  });

  it('refuses directories larger than qemu accepts, without reading them', () => {
    expect(MAX_BITMAP_DIRECTORY_BYTES).toBe(1024 * 65535);
    const huge = new Uint8Array(MAX_BITMAP_DIRECTORY_BYTES + 8);
    expect(messageOf(() => decodeBitmapDirectory(huge, 1))).toBe('Requested bitmap directory size is too big');
    expect(codeOf(() => decodeBitmapDirectory(encodeBitmapDirectory([entry()]), 65536))).toBe('BAD_BITMAP_DIRECTORY');
  });

  it('calls the entry check on each entry in order, before looking at the next', () => {
    const bytes = encodeBitmapDirectory([entry({ name: 'one' }), entry({ name: 'two' })]);
    const seen: string[] = [];
    expect(() =>
      decodeBitmapDirectory(bytes.subarray(0, 40), 2, {
        checkEntry: (e) => {
          seen.push(e.name);
          throw new Qcow2Error('BAD_BITMAP_DIRECTORY', `no ${e.name}`);
        },
      }),
    ).toThrow('no one');
    expect(seen).toEqual(['one']);
  });
});

describe('bitmaps header extension', () => {
  function extensionBytes(fields: BitmapsExtensionFields): Uint8Array {
    const data = new Uint8Array(24);
    const view = new DataView(data.buffer);
    view.setUint32(0, fields.nbBitmaps);
    view.setUint32(4, fields.reserved);
    view.setBigUint64(8, BigInt(fields.bitmapDirectorySize));
    view.setBigUint64(16, BigInt(fields.bitmapDirectoryOffset));
    return data;
  }
  const good: BitmapsExtensionFields = { nbBitmaps: 2, reserved: 0, bitmapDirectorySize: 72, bitmapDirectoryOffset: 0x80000 };

  it('decodes the 24 bytes and checks them as qemu does', () => {
    expect(decodeBitmapsExtension(extensionBytes(good))).toEqual(good);
    expect(() => checkBitmapsExtension(good, 65536)).not.toThrow();
    expect(codeOf(() => decodeBitmapsExtension(new Uint8Array(16)))).toBe('BAD_EXTENSION');
    expect(codeOf(() => decodeBitmapsExtension(new Uint8Array(32)))).toBe('BAD_EXTENSION');
    expect(messageOf(() => checkBitmapsExtension({ ...good, reserved: 1 }, 65536))).toBe('bitmaps_ext: Reserved field is not zero');
    expect(messageOf(() => checkBitmapsExtension({ ...good, nbBitmaps: 0 }, 65536))).toBe('found bitmaps extension with zero bitmaps');
    expect(messageOf(() => checkBitmapsExtension({ ...good, nbBitmaps: 65536 }, 65536))).toMatch(/exceeding the QEMU supported maximum of 65535/);
    expect(messageOf(() => checkBitmapsExtension({ ...good, bitmapDirectoryOffset: 0x80008 }, 65536))).toBe('bitmaps_ext: invalid bitmap directory offset');
    expect(messageOf(() => checkBitmapsExtension({ ...good, bitmapDirectorySize: MAX_BITMAP_DIRECTORY_BYTES + 1 }, 65536))).toMatch(
      /exceeds the maximum supported size/,
    );
  });
});

describe("qemu's per-entry constraints", () => {
  const image = { clusterSize: 65536, virtualSize: 64 * 1024 * 1024 };
  const refused = (patch: Partial<BitmapDirectoryEntry>): string => messageOf(() => checkBitmapEntryConstraints(entry(patch), image));

  it('accepts what qemu writes', () => {
    expect(() => checkBitmapEntryConstraints(entry(), image)).not.toThrow();
    expect(() => checkBitmapEntryConstraints(entry({ flags: 3 }), image)).not.toThrow();
  });

  it('refuses what qemu refuses, with its message', () => {
    expect(refused({ extraData: new Uint8Array(8) })).toBe('Bitmap extra data is not supported');
    const constraints = "Bitmap 'b1' doesn't satisfy the constraints";
    expect(refused({ bitmapTableSize: 0 })).toBe(constraints);
    expect(refused({ bitmapTableOffset: 0 })).toBe(constraints);
    expect(refused({ bitmapTableOffset: 0x60200 })).toBe(constraints);
    expect(refused({ granularityBits: 8 })).toBe(constraints);
    expect(refused({ granularityBits: 32 })).toBe(constraints);
    expect(refused({ type: 2 })).toBe(constraints);
    expect(refused({ flags: 1 << BitmapFlag.ExtraDataCompatible })).toBe(constraints);
    expect(refused({ bitmapTableSize: 0x8000001 })).toBe(constraints);
    expect(refused({ bitmapTableSize: 0x2001 })).toBe(constraints); // > 512 MiB of bitmap data
    // Too small a table for the disk: refused unless the bitmap is marked in use (left over from a resize).
    const big = { clusterSize: 512, virtualSize: 2 ** 40 };
    expect(messageOf(() => checkBitmapEntryConstraints(entry({ granularityBits: 9 }), big))).toBe(constraints);
    expect(() => checkBitmapEntryConstraints(entry({ granularityBits: 9, flags: 1 }), big)).not.toThrow();
  });
});

describe.runIf(hasQemuImg())('decodes the directories qemu-img writes', () => {
  const dir = mkdtempSync(join(tmpdir(), 'qcowkit-bitmap-dir-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('reads names, granularities and flags as qemu-img info reports them', () => {
    const file = join(dir, 'bm.qcow2');
    const ok = (args: string[]): void => {
      const r = qemuImg(args);
      expect(r.status, r.stderr).toBe(0);
    };
    ok(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', file, '32M']);
    ok(['bitmap', '--add', file, 'first']);
    ok(['bitmap', '--add', '-g', '1M', '--disable', file, 'sécond bitmap']);
    ok(['bitmap', '--add', '-g', '512', file, 'x'.repeat(1023)]);

    const bytes = new Uint8Array(readFileSync(file));
    const header = decodeHeader(bytes.subarray(0, 4096));
    const ext = decodeBitmapsExtension(findExtension(header.extensions, HeaderExtensionType.Bitmaps)!.data);
    checkBitmapsExtension(ext, 4096);
    const dirBytes = bytes.subarray(ext.bitmapDirectoryOffset, ext.bitmapDirectoryOffset + ext.bitmapDirectorySize);
    const entries = decodeBitmapDirectory(dirBytes, ext.nbBitmaps, {
      checkEntry: (e) => checkBitmapEntryConstraints(e, { clusterSize: 4096, virtualSize: 32 * 1024 * 1024 }),
    });
    expect(encodeBitmapDirectory(entries)).toEqual(dirBytes);
    expect(entries[0]!.bitmapTableOffset % 4096).toBe(0);
    expect(BITMAP_DIRECTORY_ENTRY_FIXED_BYTES).toBe(24);

    const info = JSON.parse(qemuImg(['info', '--output=json', file]).stdout) as {
      'format-specific': { data: { bitmaps: Array<{ name: string; granularity: number; flags: string[] }> } };
    };
    expect(
      entries.map((e) => ({
        name: e.name,
        granularity: 2 ** e.granularityBits,
        flags: [...(hasBitmapFlag(e.flags, BitmapFlag.InUse) ? ['in-use'] : []), ...(hasBitmapFlag(e.flags, BitmapFlag.Auto) ? ['auto'] : [])],
      })),
    ).toEqual(info['format-specific'].data.bitmaps.map(({ name, granularity, flags }) => ({ name, granularity, flags })));
  });
});
