import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { isAbsolute, join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { hasQemuImg, hasQemuIo, qemuImg, qemuIo, requireQemuImg, type RunOptions } from '../../../../fixtures/corpus.js';
import type { HostFiles } from '../device/host-files.js';
import { untrustedGate } from '../device/open-policy.js';
import { Qcow2Device } from '../device/qcow2-device.js';
import { RawDevice } from '../device/raw-device.js';
import { Qcow2Image } from '../engine/qcow2-image.js';
import { Qcow2Error } from '../errors.js';
import { MemoryStorage } from '../io/memory-storage.js';
import { nodeHostFiles } from '../node/node-host-files.js';
import { minimalImage } from '../test-support/minimal-image.js';
import { backingChain, fullBackingFilename, imageInfo, openImageForInfo, snapshotInfos, type ImageInfo, type OpenForInfoOptions, type Qcow2SpecificInfo } from './image-info.js';

requireQemuImg();

/** The local file system with relative names resolved against `dir`, as if the process ran there. */
function hostFilesIn(dir: string): HostFiles {
  const at = (name: string): string => (isAbsolute(name) ? name : join(dir, name));
  return {
    open: (name, options) => nodeHostFiles.open(at(name), options),
    canonical: (name) => nodeHostFiles.canonical!(at(name)),
  };
}

/** qemu-img's JSON, with integers past 2^53 kept exact (as "#bigint:N" strings, like canonicalJson makes them). */
function parseQemuJson(text: string): unknown {
  return JSON.parse(text.replace(/(": )(-?\d{16,})(,?\n)/g, (match, a: string, digits: string, b: string) =>
    Number.isSafeInteger(Number(digits)) ? match : `${a}"#bigint:${BigInt(digits)}"${b}`,
  ));
}

/** JSON text with bigints as "#bigint:N" strings, so key order and values compare as qemu prints them. */
function canonicalJson(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) => (typeof v === 'bigint' ? `#bigint:${v}` : v));
}

describe('fullBackingFilename (qemu bdrv_make_absolute_filename)', () => {
  it('joins relative names to the directory part of the image name, without normalising', () => {
    expect(fullBackingFilename('top.qcow2', 'base.qcow2')).toBe('base.qcow2');
    expect(fullBackingFilename('dir/top.qcow2', 'base.qcow2')).toBe('dir/base.qcow2');
    expect(fullBackingFilename('./a/b/top.qcow2', '../../base.qcow2')).toBe('./a/b/../../base.qcow2');
    expect(fullBackingFilename('/abs/top.qcow2', 'sub/base')).toBe('/abs/sub/base');
    expect(fullBackingFilename('dir/top.qcow2', '/abs/base')).toBe('/abs/base');
  });
  it('keeps names with a protocol prefix as they are (a ":" before any "/")', () => {
    expect(fullBackingFilename('dir/top.qcow2', 'nbd:localhost:10809')).toBe('nbd:localhost:10809');
    expect(fullBackingFilename('dir/top.qcow2', 'foo:bar.qcow2')).toBe('foo:bar.qcow2');
    expect(fullBackingFilename('dir/top.qcow2', 'sub/foo:bar')).toBe('dir/sub/foo:bar');
  });
});

describe('imageInfo without qemu', () => {
  it('reports what a storage that cannot tell its allocation has no actual-size for', async () => {
    const image = await Qcow2Image.open(new MemoryStorage(minimalImage(1 << 20), { name: 'mem.qcow2' }));
    const info = await imageInfo(new Qcow2Device('mem.qcow2', image, undefined));
    expect(info).toEqual({
      'virtual-size': 1048576,
      filename: 'mem.qcow2',
      'cluster-size': 65536,
      format: 'qcow2',
      'format-specific': {
        type: 'qcow2',
        data: { compat: '1.1', 'compression-type': 'zlib', 'lazy-refcounts': false, 'refcount-bits': 16, corrupt: false, 'extended-l2': false },
      },
      'dirty-flag': false,
    });
    expect(Object.keys(info)).toEqual(['virtual-size', 'filename', 'cluster-size', 'format', 'format-specific', 'dirty-flag']);
  });

  it('rounds a raw size up to 512 bytes, as qemu counts sectors', async () => {
    const raw = await RawDevice.open(new MemoryStorage(new Uint8Array(1000), { name: 'r' }), 'r.img');
    expect(await imageInfo(raw)).toEqual({ 'virtual-size': 1024, filename: 'r.img', format: 'raw', 'dirty-flag': false });
    expect(snapshotInfos(raw)).toEqual([]);
  });
});

describe.runIf(hasQemuImg())('imageInfo equals qemu-img info --output=json', () => {
  const work = mkdtempSync(join(tmpdir(), 'qcowkit-image-info-'));
  afterAll(() => rmSync(work, { recursive: true, force: true }));
  const hostFiles = hostFilesIn(work);

  const img = (args: string[], opts: RunOptions = {}): string => {
    const r = qemuImg(args, { cwd: work, ...opts });
    expect(r.status, `qemu-img ${args.join(' ')}: ${r.stderr}`).toBe(0);
    return r.stdout;
  };
  const create = (file: string, size: string, options = '', cwd = work): void => {
    img(['create', '-q', '-f', 'qcow2', ...(options ? ['-o', options] : []), file, size], { cwd });
  };

  async function ours(file: string, options: Partial<OpenForInfoOptions> & { chain?: boolean } = {}): Promise<ImageInfo | ImageInfo[]> {
    const device = await openImageForInfo(file, { hostFiles, ...options, ...(options.chain ? { backingChain: true } : {}) });
    try {
      return options.chain ? await backingChain(device) : await imageInfo(device);
    } finally {
      await device.close();
    }
  }

  /** Compares values, then key order (a canonical JSON string of both). */
  async function expectSameAsQemu(file: string, qemuArgs: string[] = [], options: { chain?: boolean } = {}): Promise<ImageInfo | ImageInfo[]> {
    const theirs = parseQemuJson(img(['info', '--output=json', ...(options.chain ? ['--backing-chain'] : []), ...qemuArgs, file]));
    const format = qemuArgs.includes('-f') ? (qemuArgs[qemuArgs.indexOf('-f') + 1] as 'raw' | 'qcow2') : undefined;
    const mine = await ours(file, { ...options, ...(format ? { format } : {}) });
    expect(JSON.parse(canonicalJson(mine))).toEqual(theirs);
    expect(canonicalJson(mine)).toBe(canonicalJson(theirs));
    return mine;
  }

  function patchFile(file: string, offset: number, bytes: Uint8Array): void {
    const fd = openSync(join(work, file), 'r+');
    try {
      writeSync(fd, bytes, 0, bytes.length, offset);
    } finally {
      closeSync(fd);
    }
  }

  function u64(value: bigint): Uint8Array {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, BigInt.asUintN(64, value));
    return b;
  }

  /** Rewrites fields of snapshot `index` in place (the table layout does not change). */
  function patchSnapshot(file: string, index: number, fields: { icount?: bigint; vmClockNsec?: bigint; vmStateSize?: bigint }): void {
    const fd = openSync(join(work, file), 'r+');
    try {
      const header = Buffer.alloc(72);
      readSync(fd, header, 0, 72, 0);
      const offset = Number(header.readBigUInt64BE(64));
      const table = Buffer.alloc(65536);
      readSync(fd, table, 0, table.length, offset);
      let p = 0;
      for (let i = 0; i < index; i++) p += (40 + table.readUInt32BE(p + 36) + table.readUInt16BE(p + 12) + table.readUInt16BE(p + 14) + 7) & ~7;
      const extra = table.readUInt32BE(p + 36);
      if (fields.vmClockNsec !== undefined) table.writeBigUInt64BE(fields.vmClockNsec, p + 24);
      if (fields.vmStateSize !== undefined) {
        table.writeUInt32BE(fields.vmStateSize >= 2n ** 32n ? 0 : Number(fields.vmStateSize), p + 32);
        if (extra >= 8) table.writeBigUInt64BE(fields.vmStateSize, p + 40);
      }
      if (fields.icount !== undefined && extra >= 24) table.writeBigUInt64BE(BigInt.asUintN(64, fields.icount), p + 56);
      writeSync(fd, table, 0, table.length, offset);
    } finally {
      closeSync(fd);
    }
  }

  it('v3 defaults, v2 (compat 0.10 and fewer keys), cluster sizes and refcount widths', async () => {
    create('v3.qcow2', '8M');
    create('v2.qcow2', '1G', 'compat=0.10');
    create('c512.qcow2', '3M', 'cluster_size=512,refcount_bits=1');
    create('c2m.qcow2', '100M', 'cluster_size=2M,refcount_bits=64');
    create('odd.qcow2', '1000');
    await expectSameAsQemu('v3.qcow2');
    const v2 = (await expectSameAsQemu('v2.qcow2')) as ImageInfo;
    expect(v2['format-specific']!.data).toEqual({ compat: '0.10', 'compression-type': 'zlib', 'refcount-bits': 16 });
    await expectSameAsQemu('c512.qcow2');
    await expectSameAsQemu('c2m.qcow2');
    await expectSameAsQemu('odd.qcow2');
    // A header size that is not a multiple of 512: qemu rounds it down.
    patchFile('odd.qcow2', 24, u64(1000n));
    expect(((await expectSameAsQemu('odd.qcow2')) as ImageInfo)['virtual-size']).toBe(512);
  });

  it('extended L2, zstd, lazy refcounts, with data written', async () => {
    create('features.qcow2', '5G', 'extended_l2=on,compression_type=zstd,lazy_refcounts=on,refcount_bits=64');
    create('zstd-c512.qcow2', '2M', 'compression_type=zstd,cluster_size=512');
    if (hasQemuIo()) {
      expect(qemuIo(['-c', 'write -P 7 0 1M', '-c', 'write -c -P 9 2M 64k', 'features.qcow2'], { cwd: work }).status).toBe(0);
    }
    await expectSameAsQemu('features.qcow2');
    await expectSameAsQemu('zstd-c512.qcow2');
  });

  it('external data files, with and without data_file_raw, named relative to an image in a subdirectory', async () => {
    mkdirSync(join(work, 'df'), { recursive: true });
    create('with-raw.qcow2', '10M', 'data_file=with-raw.data,data_file_raw=on', join(work, 'df'));
    create('not-raw.qcow2', '10M', 'data_file=not-raw.data', join(work, 'df'));
    // qemu-img info does not open the data file (run from work/, "not-raw.data" does not even resolve).
    const raw = (await expectSameAsQemu('df/with-raw.qcow2')) as ImageInfo;
    expect(raw['format-specific']!.data).toMatchObject({ 'data-file': 'with-raw.data', 'data-file-raw': true });
    await expectSameAsQemu('df/not-raw.qcow2');
    rmSync(join(work, 'df/not-raw.data'));
    await expectSameAsQemu('df/not-raw.qcow2');
  });

  it('persistent bitmaps: enabled, disabled, in use, non-ASCII names', async () => {
    create('bitmaps.qcow2', '64M', 'cluster_size=4096');
    img(['bitmap', '--add', 'bitmaps.qcow2', 'b1']);
    img(['bitmap', '--add', '-g', '1M', '--disable', 'bitmaps.qcow2', 'b é 2']);
    img(['bitmap', '--add', '-g', '512', 'bitmaps.qcow2', 'fine']);
    const info = (await expectSameAsQemu('bitmaps.qcow2')) as ImageInfo;
    expect((info['format-specific']!.data as Qcow2SpecificInfo).bitmaps!.map((b) => b.flags)).toEqual([['auto'], [], ['auto']]);
    if (hasQemuIo()) {
      // A qemu that dies with the image open leaves its bitmaps marked in use.
      writeFileSync(join(work, 'inuse.qcow2'), readFileSync(join(work, 'bitmaps.qcow2')));
      qemuIo(['-c', 'write 0 64k', '-c', 'flush', '-c', 'abort', 'inuse.qcow2'], { cwd: work });
      const inUse = (await expectSameAsQemu('inuse.qcow2')) as ImageInfo;
      expect((inUse['format-specific']!.data as Qcow2SpecificInfo).bitmaps![0]!.flags).toEqual(['in-use', 'auto']);
    }
  });

  it('ignores bitmaps the autoclear bit no longer vouches for, with a warning', async () => {
    writeFileSync(join(work, 'stale-bitmaps.qcow2'), readFileSync(join(work, 'bitmaps.qcow2')));
    patchFile('stale-bitmaps.qcow2', 88, u64(0n));
    const r = qemuImg(['info', 'stale-bitmaps.qcow2'], { cwd: work });
    expect(r.stderr).toMatch(/bitmaps are now considered inconsistent/);
    const device = await openImageForInfo('stale-bitmaps.qcow2', { hostFiles });
    const warnings: string[] = [];
    const info = await imageInfo(device, { warn: (m) => warnings.push(m) });
    await device.close();
    expect((info['format-specific']!.data as Qcow2SpecificInfo).bitmaps).toBeUndefined();
    expect(warnings).toEqual(['a program lacking bitmap support modified this file, so all bitmaps are now considered inconsistent']);
    await expectSameAsQemu('stale-bitmaps.qcow2');
  });

  it('refuses a broken bitmap directory where qemu refuses it', async () => {
    const bytes = readFileSync(join(work, 'bitmaps.qcow2'));
    // The bitmaps extension follows the 112-byte header: find the directory offset and break entry 0's type.
    let p = 112;
    while (bytes.readUInt32BE(p) !== 0x23852875) p += 8 + ((bytes.readUInt32BE(p + 4) + 7) & ~7);
    const dirOffset = Number(bytes.readBigUInt64BE(p + 24));
    const cases: Array<[string, number, number, string]> = [
      ['type', dirOffset + 16, 2, "Bitmap 'b1' doesn't satisfy the constraints"],
      ['granularity', dirOffset + 17, 40, "Bitmap 'b1' doesn't satisfy the constraints"],
      ['extra data', dirOffset + 23, 8, 'Bitmap extra data is not supported'],
      ['nb_bitmaps', p + 11, 4, 'Less bitmaps found than specified in header extension'],
      ['reserved', p + 15, 1, 'bitmaps_ext: Reserved field is not zero'],
    ];
    for (const [what, offset, value, message] of cases) {
      const file = `broken-${what.replace(' ', '-')}.qcow2`;
      const copy = Buffer.from(bytes);
      copy[offset] = value;
      writeFileSync(join(work, file), copy);
      const r = qemuImg(['info', file], { cwd: work });
      expect(r.status, what).toBe(1);
      expect(r.stderr, what).toContain(message);
      const error = await ours(file).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(error, what).toBeInstanceOf(Qcow2Error);
      expect((error as Qcow2Error).message, what).toBe(message);
      expect((error as Qcow2Error).file, what).toBe(file);
    }
    // A directory placed past the end of the file.
    const past = Buffer.from(bytes);
    past.writeBigUInt64BE(BigInt(Math.ceil((bytes.length + 1) / 4096) * 4096), p + 24);
    writeFileSync(join(work, 'broken-past-end.qcow2'), past);
    await expect(ours('broken-past-end.qcow2')).rejects.toMatchObject({ code: 'TRUNCATED' });
  });

  it('snapshots: icount present, absent (-1) and past 2^53, VM clock split, large VM state', async () => {
    create('snap.qcow2', '8M');
    img(['snapshot', '-c', 'first', 'snap.qcow2']);
    img(['snapshot', '-c', 'sécond 😀', 'snap.qcow2']);
    img(['snapshot', '-c', 'third', 'snap.qcow2']);
    await expectSameAsQemu('snap.qcow2'); // qemu-img snapshot -c stores icount 0
    patchSnapshot('snap.qcow2', 0, { icount: -1n, vmStateSize: 1152n });
    patchSnapshot('snap.qcow2', 1, { icount: 123456789012n, vmClockNsec: 363723456789012n, vmStateSize: 5_000_000_000n });
    patchSnapshot('snap.qcow2', 2, { icount: 2n ** 60n + 1n, vmClockNsec: 999_999_999n });
    const info = (await expectSameAsQemu('snap.qcow2')) as ImageInfo;
    const [first, second, third] = info.snapshots!;
    expect(first).not.toHaveProperty('icount');
    expect(Object.keys(first!)).toEqual(['vm-clock-nsec', 'name', 'date-sec', 'date-nsec', 'vm-clock-sec', 'id', 'vm-state-size']);
    expect(second).toMatchObject({ icount: 123456789012, 'vm-clock-sec': 363723, 'vm-clock-nsec': 456789012, 'vm-state-size': 5_000_000_000 });
    expect(third!.icount).toBe(2n ** 60n + 1n);
    // JSON.parse loses bits past 2^53: compare the digits qemu printed.
    expect(img(['info', '--output=json', 'snap.qcow2'])).toContain(`"icount": ${2n ** 60n + 1n},`);
    // An icount with the top bit set is a negative int64 for qemu.
    patchSnapshot('snap.qcow2', 2, { icount: -5n });
    expect(((await expectSameAsQemu('snap.qcow2')) as ImageInfo).snapshots![2]!.icount).toBe(-5);
  });

  it('v2 snapshots', async () => {
    create('v2snap.qcow2', '1M', 'compat=0.10');
    img(['snapshot', '-c', 'one', 'v2snap.qcow2']);
    await expectSameAsQemu('v2snap.qcow2');
  });

  it('dirty and corrupt images', async () => {
    create('lazy.qcow2', '16M', 'lazy_refcounts=on');
    if (hasQemuIo()) {
      qemuIo(['-c', 'write 0 64k', '-c', 'flush', '-c', 'abort', 'lazy.qcow2'], { cwd: work });
      expect(((await expectSameAsQemu('lazy.qcow2')) as ImageInfo)['dirty-flag']).toBe(true);
    }
    create('corrupt.qcow2', '1M');
    patchFile('corrupt.qcow2', 72, u64(0b10n)); // incompatible bit 1: corrupt
    const corrupt = (await expectSameAsQemu('corrupt.qcow2')) as ImageInfo;
    expect((corrupt['format-specific']!.data as Qcow2SpecificInfo).corrupt).toBe(true);
  });

  it('raw images, probed or named with -f', async () => {
    writeFileSync(join(work, 'odd.raw'), new Uint8Array(1000).fill(0x41));
    img(['create', '-q', '-f', 'raw', 'sparse.raw', '1G']);
    await expectSameAsQemu('odd.raw');
    await expectSameAsQemu('sparse.raw');
    await expectSameAsQemu('sparse.raw', ['-f', 'raw']);
    await expectSameAsQemu('v3.qcow2', ['-f', 'raw']);
  });

  it('backing chains with relative names in subdirectories, and --backing-chain', async () => {
    mkdirSync(join(work, 'chain/deeper'), { recursive: true });
    img(['create', '-q', '-f', 'raw', 'base.raw', '4M'], { cwd: join(work, 'chain/deeper') });
    create('mid.qcow2', '4M', 'backing_file=base.raw,backing_fmt=raw', join(work, 'chain/deeper'));
    create('top.qcow2', '8M', 'backing_file=deeper/mid.qcow2,backing_fmt=qcow2', join(work, 'chain'));
    create('over.qcow2', '8M', 'backing_file=chain/top.qcow2,backing_fmt=qcow2');
    create('up.qcow2', '8M', 'backing_file=../../over.qcow2,backing_fmt=qcow2', join(work, 'chain/deeper'));
    create('abs.qcow2', '8M', `backing_file=${join(work, 'v3.qcow2')},backing_fmt=qcow2`);
    for (const file of ['over.qcow2', 'chain/top.qcow2', './chain/deeper/mid.qcow2', 'chain/deeper/up.qcow2', 'abs.qcow2', join(work, 'chain/deeper/up.qcow2')]) {
      await expectSameAsQemu(file);
      await expectSameAsQemu(file, [], { chain: true });
    }
    const chain = (await ours('chain/deeper/up.qcow2', { chain: true })) as ImageInfo[];
    expect(chain.map((i) => i.filename)).toEqual([
      'chain/deeper/up.qcow2',
      'chain/deeper/../../over.qcow2',
      'chain/deeper/../../chain/top.qcow2',
      'chain/deeper/../../chain/deeper/mid.qcow2',
      'chain/deeper/../../chain/deeper/base.raw',
    ]);
    expect(chain[1]!['full-backing-filename']).toBe('chain/deeper/../../chain/top.qcow2');
  });

  it('a backing file without a format is probed; with -f, qemu-img uses that format for it too', async () => {
    create('noformat.qcow2', '8M', 'backing_file=v3.qcow2,backing_fmt=qcow2');
    // Drop the backing format extension: qemu-img create insists on one, so overwrite its type with an unknown one.
    const bytes = readFileSync(join(work, 'noformat.qcow2'));
    let p = 112;
    while (bytes.readUInt32BE(p) !== 0xe2792aca) p += 8 + ((bytes.readUInt32BE(p + 4) + 7) & ~7);
    patchFile('noformat.qcow2', p, new Uint8Array([0x12, 0x34, 0x56, 0x78]));
    await expectSameAsQemu('noformat.qcow2', [], { chain: true });
    await expectSameAsQemu('noformat.qcow2', ['-f', 'qcow2'], { chain: true });
  });

  it('info of an image whose backing file is missing works; the chain fails, as with qemu-img', async () => {
    img(['create', '-q', '-f', 'qcow2', '-u', '-b', 'missing.qcow2', '-F', 'qcow2', 'orphan.qcow2', '1M']);
    await expectSameAsQemu('orphan.qcow2');
    expect(qemuImg(['info', '--backing-chain', 'orphan.qcow2'], { cwd: work }).status).toBe(1);
    await expect(ours('orphan.qcow2', { chain: true })).rejects.toMatchObject({ code: 'BACKING_NOT_FOUND', file: 'orphan.qcow2' });
  });

  it('refuses chains deeper than asked', async () => {
    await expect(ours('over.qcow2', { chain: true, maxChainDepth: 1 })).rejects.toMatchObject({ code: 'CHAIN_TOO_DEEP' });
    expect(((await ours('over.qcow2', { chain: true, maxChainDepth: 3 })) as ImageInfo[]).length).toBe(4);
  });

  it('ignores the data_file_raw bit without a data file, as qemu does', async () => {
    create('raw-bit.qcow2', '1M');
    patchFile('raw-bit.qcow2', 88, u64(0b10n));
    const info = (await expectSameAsQemu('raw-bit.qcow2')) as ImageInfo;
    expect(info['format-specific']!.data).not.toHaveProperty('data-file-raw');
  });

  it('refuses backing loops', async () => {
    create('loop-a.qcow2', '1M');
    create('loop-b.qcow2', '1M', 'backing_file=loop-a.qcow2,backing_fmt=qcow2');
    img(['rebase', '-u', '-b', 'loop-b.qcow2', '-F', 'qcow2', 'loop-a.qcow2']);
    const r = qemuImg(['info', '--backing-chain', 'loop-a.qcow2'], { cwd: work });
    expect(r.status).toBe(1);
    expect(r.stderr).toContain("Backing file 'loop-a.qcow2' creates an infinite loop.");
    await expect(ours('loop-a.qcow2', { chain: true })).rejects.toMatchObject({
      code: 'BACKING_LOOP',
      message: "Backing file 'loop-a.qcow2' creates an infinite loop.",
    });
  });

  it('follows backing references through the gate only for the chain', async () => {
    await expectSameAsQemu('over.qcow2'); // reporting the name is not following it
    const plain = await ours('over.qcow2', { gate: untrustedGate });
    expect((plain as ImageInfo)['backing-filename']).toBe('chain/top.qcow2');
    await expect(ours('over.qcow2', { gate: untrustedGate, chain: true })).rejects.toMatchObject({ code: 'UNTRUSTED_REFERENCE' });
  });

  it('a metadata-only device refuses to read data from an external data file it did not open', async () => {
    const device = await openImageForInfo('df/with-raw.qcow2', { hostFiles });
    try {
      await expect(device.read(new Uint8Array(512), 0)).rejects.toMatchObject({ code: 'DATA_FILE_NOT_FOUND' });
    } finally {
      await device.close();
    }
  });
});
