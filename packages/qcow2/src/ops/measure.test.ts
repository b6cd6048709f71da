import { closeSync, mkdtempSync, openSync, readSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { corpusDir, generatedDir, hasCorpus, hasQemuImg, hasQemuIo, loadManifest, qemuImg, qemuIo, requireQemuImg } from '../../../../fixtures/corpus.js';
import type { BlockDevice } from '../device/block-device.js';
import { Qcow2Device } from '../device/qcow2-device.js';
import { RawDevice } from '../device/raw-device.js';
import { Qcow2Error } from '../errors.js';
import { MemoryStorage } from '../io/memory-storage.js';
import type { Storage, StorageRegion } from '../io/storage.js';
import { openImageFile } from '../node/index.js';
import { hasMetadataPreallocation } from '../engine/metadata-preallocation.js';
import {
  dataClusterBytes,
  measureImage,
  measureNewImage,
  qcow2FullyAllocatedSize,
  refcountMetadataSize,
  type MeasureOptions,
  type MeasureResult,
} from './measure.js';

requireQemuImg();

const withQemu = hasQemuImg();
const withQemuIo = withQemu && hasQemuIo();

// ---------------------------------------------------------------------------------------------------------
// qemu-img measure, and the engine's options in qemu-img's -O/-o words

interface Target {
  args: string[];
  options: MeasureOptions;
}

function target(format: 'qcow2' | 'raw', o: string | undefined, options: Omit<MeasureOptions, 'format'> = {}): Target {
  return { args: ['-O', format, ...(o === undefined ? [] : ['-o', o])], options: { format, ...options } };
}

/** qemu-img measure's result or its error message (without the "qemu-img: " prefix). */
function qemuMeasureOrError(args: string[]): MeasureResult | string {
  const r = qemuImg(['measure', '--output=json', ...args]);
  if (r.status !== 0) return r.stderr.trim().replace(/^qemu-img: /, '');
  return qemuMeasure(args);
}

/** measureNewImage(bytes) against qemu-img measure --size TEXT: the same numbers, or the same error. */
function expectSameNew(text: string, bytes: bigint | number, t: Target): void {
  const theirs = qemuMeasureOrError([...t.args, '--size', text]);
  let ours: MeasureResult | string;
  try {
    ours = measureNewImage(bytes, t.options);
  } catch (error) {
    if (!(error instanceof Qcow2Error)) throw error;
    ours = error.message;
  }
  expect(ours, `--size ${text} ${t.args.join(' ')}`).toEqual(theirs);
}

/** qemu-img measure --output=json ARGS, numbers as bigints (qemu prints int64: 2^63 and up come out negative). */
function qemuMeasure(args: string[], cwd?: string): MeasureResult {
  const r = qemuImg(['measure', '--output=json', ...args], cwd === undefined ? {} : { cwd });
  if (r.status !== 0) throw new Error(`qemu-img measure ${args.join(' ')}: ${r.stderr}`);
  const values = new Map<string, bigint>();
  for (const m of r.stdout.matchAll(/"([a-z-]+)": (-?\d+)/g)) values.set(m[1]!, BigInt.asUintN(64, BigInt(m[2]!)));
  const result: MeasureResult = { required: values.get('required')!, fullyAllocated: values.get('fully-allocated')! };
  if (values.has('bitmaps')) result.bitmaps = values.get('bitmaps')!;
  return result;
}

const KiB = 1024;
const MiB = 1024 * KiB;
const CLUSTER_SIZES = Array.from({ length: 13 }, (_, i) => 512 * 2 ** i); // 512 .. 2M
const REFCOUNT_BITS = [1, 2, 4, 8, 16, 32, 64];

// ---------------------------------------------------------------------------------------------------------

describe('measure arithmetic (no qemu needed)', () => {
  it('finds the refcount fixed point: blocks and table count themselves', () => {
    // 64k clusters, 16-bit refcounts: one block covers 32768 clusters; 32768 clusters + 1 block + 1 table need 2 blocks.
    expect(refcountMetadataSize(1n, 65536n, 4)).toBe(2n * 65536n);
    expect(refcountMetadataSize(32766n, 65536n, 4)).toBe(2n * 65536n);
    expect(refcountMetadataSize(32767n, 65536n, 4)).toBe(3n * 65536n);
    // 512-byte clusters, 64-bit refcounts: 64 refcounts per block, 64 blocks per table cluster.
    expect(refcountMetadataSize(62n, 512n, 6)).toBe(2n * 512n);
    expect(refcountMetadataSize(63n, 512n, 6)).toBe(3n * 512n);
  });

  it('sizes a fully allocated qcow2 image: header, L2, L1 in whole clusters, refcounts, data', () => {
    // 1 GiB, 64k clusters: 64k header + 128k L2 + 64k L1 + 128k refcounts + 1 GiB.
    expect(qcow2FullyAllocatedSize(1n << 30n, 65536n, 4, false)).toBe(1074135040n);
    // An empty disk still has a header and its refcounts (and a zero-length L1).
    expect(qcow2FullyAllocatedSize(0n, 65536n, 4, false)).toBe(3n * 65536n);
  });

  it('measures raw targets by the size alone, rounded up to sectors', () => {
    expect(measureNewImage(1000, { format: 'raw' })).toEqual({ required: 1024n, fullyAllocated: 1024n });
    expect(measureNewImage((1n << 63n) - 1n, { format: 'raw' })).toEqual({ required: 1n << 63n, fullyAllocated: 1n << 63n });
  });

  it("refuses qemu's bad combinations with qemu's messages", () => {
    const bad = (options: Omit<MeasureOptions, 'format'>, size = 1 << 30): string => {
      try {
        measureNewImage(size, { format: 'qcow2', ...options });
      } catch (error) {
        expect(error).toBeInstanceOf(Qcow2Error);
        return (error as Error).message;
      }
      throw new Error('no error');
    };
    expect(bad({ clusterSize: 1000 })).toBe('Cluster size must be a power of two between 512 and 2048k');
    expect(bad({ clusterSize: 4 * MiB })).toBe('Cluster size must be a power of two between 512 and 2048k');
    expect(bad({ clusterSize: 8192, extendedL2: true })).toBe('Extended L2 entries are only supported with cluster sizes of at least 16384 bytes');
    expect(bad({ refcountBits: 3 })).toBe('Refcount width must be a power of two and may not exceed 64 bits');
    expect(bad({ refcountBits: 128 })).toBe('Refcount width must be a power of two and may not exceed 64 bits');
    expect(bad({ compat: '0.10', refcountBits: 8 })).toBe(
      'Different refcount widths than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)',
    );
    expect(bad({ compat: 'v3' as MeasureOptions['compat'] })).toBe("Invalid compatibility level: 'v3'");
    expect(bad({ preallocation: 'bogus' as MeasureOptions['preallocation'] })).toBe('invalid parameter value: bogus');
    expect(bad({ clusterSize: 512 }, 100 * 2 ** 40)).toBe('The image size is too large (try using a larger cluster size)');
  });

  it('counts each target cluster holding data once, however many extents touch it', async () => {
    // 256 KiB raw disk: data at [1000, 1100), [3000, 5000), [70000, 70001), the rest holes.
    const regions = [
      { offset: 0, length: 1000, hole: true },
      { offset: 1000, length: 100, hole: false },
      { offset: 1100, length: 1900, hole: true },
      { offset: 3000, length: 2000, hole: false },
      { offset: 5000, length: 65000, hole: true },
      { offset: 70000, length: 1, hole: false },
      { offset: 70001, length: 256 * KiB - 70001, hole: true },
    ];
    const dataRegions = async (offset: number, length: number): Promise<StorageRegion[]> =>
      regions
        .filter((r) => r.offset < offset + length && r.offset + r.length > offset)
        .map((r) => {
          const start = Math.max(r.offset, offset);
          return { offset: start, length: Math.min(r.offset + r.length, offset + length) - start, hole: r.hole };
        });
    const storage: Storage = Object.assign(new MemoryStorage(new Uint8Array(256 * KiB), { name: 'mem.raw' }), { dataRegions });
    const device = await RawDevice.open(storage);
    expect(await dataClusterBytes(device, 512)).toBe(BigInt(512 * (2 + 5 + 1))); // [512,1536) [2560,5120) [69632,70144)
    expect(await dataClusterBytes(device, 4096)).toBe(BigInt(4096 * 3)); // clusters 0, 1, 17
    expect(await dataClusterBytes(device, 65536)).toBe(BigInt(65536 * 2)); // clusters 0, 1
    expect(await dataClusterBytes(device, 2 * MiB)).toBe(BigInt(2 * MiB));
  });
});

// ---------------------------------------------------------------------------------------------------------

describe.runIf(withQemu)('measureNewImage equals qemu-img measure --size', () => {
  const SIZES = ['0', '1', '1000', '64k', '1M', '1G', '1.5G', '100G'];

  it('for every cluster size and refcount width', () => {
    for (const clusterSize of CLUSTER_SIZES) {
      for (const refcountBits of REFCOUNT_BITS) {
        for (const size of ['1000', '1G', '100G']) {
          const t = target('qcow2', `cluster_size=${clusterSize},refcount_bits=${refcountBits}`, { clusterSize, refcountBits });
          expectSameNew(size, size === '1000' ? 1000 : size === '1G' ? 2 ** 30 : 100 * 2 ** 30, t);
        }
      }
    }
  });

  it('with extended L2 entries, compat=0.10, preallocation and backing files', () => {
    const targets: Target[] = [
      target('qcow2', undefined),
      target('raw', undefined),
      target('raw', 'preallocation=full'),
      target('qcow2', 'compat=0.10', { compat: '0.10' }),
      target('qcow2', 'compat=0.10,extended_l2=on', { compat: '0.10', extendedL2: true }),
      target('qcow2', 'compat=1.1,lazy_refcounts=on,compression_type=zstd', { compat: '1.1' }),
      target('qcow2', 'preallocation=metadata', { preallocation: 'metadata' }),
      target('qcow2', 'preallocation=falloc', { preallocation: 'falloc' }),
      target('qcow2', 'preallocation=full,cluster_size=4k', { preallocation: 'full', clusterSize: 4096 }),
      target('qcow2', 'backing_file=base.qcow2,backing_fmt=qcow2', { hasBackingFile: true }),
      ...[16, 32, 64, 128, 256, 512, 1024, 2048].flatMap((k) =>
        [1, 16, 64].map((refcountBits) =>
          target('qcow2', `extended_l2=on,cluster_size=${k}k,refcount_bits=${refcountBits}`, { extendedL2: true, clusterSize: k * KiB, refcountBits }),
        ),
      ),
    ];
    const bytesOf: Record<string, number> = { '0': 0, '1': 1, '1000': 1000, '64k': 64 * KiB, '1M': MiB, '1G': 2 ** 30, '1.5G': 1.5 * 2 ** 30, '100G': 100 * 2 ** 30 };
    for (const t of targets) {
      for (const size of SIZES) {
        expectSameNew(size, bytesOf[size]!, t);
      }
    }
  });

  it('for disks far past 2^53 bytes, exactly', () => {
    const cases: Array<[string, bigint, Target]> = [
      ['4P', 4n << 50n, target('qcow2', 'cluster_size=2M', { clusterSize: 2 * MiB })],
      ['2E', 2n << 60n, target('qcow2', 'cluster_size=2M', { clusterSize: 2 * MiB })],
      ['2E', 2n << 60n, target('qcow2', 'cluster_size=2M,extended_l2=on,refcount_bits=1', { clusterSize: 2 * MiB, extendedL2: true, refcountBits: 1 })],
      ['7E', 7n << 60n, target('raw', undefined)],
      ['9223372036854775807', (1n << 63n) - 1n, target('raw', undefined)],
      ['256T', 256n << 40n, target('qcow2', undefined)],
      ['100T', 100n << 40n, target('qcow2', 'cluster_size=512', { clusterSize: 512 })],
      ['1E', 1n << 60n, target('qcow2', 'cluster_size=1M,extended_l2=on', { clusterSize: MiB, extendedL2: true })],
    ];
    for (const [text, bytes, t] of cases) {
      expectSameNew(text, bytes, t);
    }
  });
});

// ---------------------------------------------------------------------------------------------------------
// Images

/** Deterministic, recognisable bytes: a text line per 64 bytes naming its offset. */
function pattern(offset: number, length: number): Uint8Array {
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) {
    const at = offset + i;
    out[i] = 0x41 + ((at * 7 + (at >> 9)) % 26);
  }
  return out;
}

function writeAt(path: string, offset: number, data: Uint8Array): void {
  const fd = openSync(path, 'r+');
  try {
    writeSync(fd, data, 0, data.length, offset);
  } finally {
    closeSync(fd);
  }
}

function mustQemuImg(args: string[], cwd: string): void {
  const r = qemuImg(args, { cwd });
  if (r.status !== 0) throw new Error(`qemu-img ${args.join(' ')}: ${r.stderr}`);
}

function mustQemuIo(file: string, commands: string[], cwd: string, format = 'qcow2'): void {
  const r = qemuIo(['-f', format, ...commands.flatMap((c) => ['-c', c]), file], { cwd });
  if (r.status !== 0 || /failed|error/i.test(r.stdout + r.stderr)) throw new Error(`qemu-io ${file} ${commands.join('; ')}: ${r.stdout}${r.stderr}`);
}

function createRaw(dir: string, name: string, size: number, data: Array<[number, number]>, zeros: Array<[number, number]> = []): void {
  const path = join(dir, name);
  closeSync(openSync(path, 'w'));
  mustQemuImg(['create', '-q', '-f', 'raw', name, String(size)], dir);
  for (const [offset, length] of data) writeAt(path, offset, pattern(offset, length));
  // Written zeros are data to the file system (SEEK_DATA), though they read as zeros.
  for (const [offset, length] of zeros) writeAt(path, offset, new Uint8Array(length));
}

/** Flips bits of a 32-bit big-endian word in a file. */
function patchU32(path: string, offset: number, update: (value: number) => number): void {
  const fd = openSync(path, 'r+');
  try {
    const buffer = Buffer.alloc(4);
    readSync(fd, buffer, 0, 4, offset);
    buffer.writeUInt32BE(update(buffer.readUInt32BE(0)) >>> 0, 0);
    writeSync(fd, buffer, 0, 4, offset);
  } finally {
    closeSync(fd);
  }
}

/** Byte offset of the first bitmap directory entry of a qcow2 image, from qemu-img's own view of the header. */
function bitmapDirectoryOffset(path: string): number {
  const fd = openSync(path, 'r');
  try {
    const header = Buffer.alloc(4096);
    readSync(fd, header, 0, header.length, 0);
    let at = header.readUInt32BE(100); // header_length (v3)
    for (;;) {
      const type = header.readUInt32BE(at);
      const length = header.readUInt32BE(at + 4);
      if (type === 0) throw new Error(`${path}: no bitmaps extension`);
      if (type === 0x23852875) return Number(header.readBigUInt64BE(at + 8 + 16));
      at += 8 + Math.ceil(length / 8) * 8;
    }
  } finally {
    closeSync(fd);
  }
}

interface Source {
  file: string;
  /** Extra measure arguments for the source (-f, -l). */
  args?: string[];
  snapshot?: { id?: string; name?: string };
}

const TARGETS: Target[] = [
  target('qcow2', undefined),
  target('raw', undefined),
  target('qcow2', 'cluster_size=512', { clusterSize: 512 }),
  target('qcow2', 'cluster_size=4k,refcount_bits=1', { clusterSize: 4096, refcountBits: 1 }),
  target('qcow2', 'cluster_size=16k,refcount_bits=8', { clusterSize: 16 * KiB, refcountBits: 8 }),
  target('qcow2', 'cluster_size=2M,refcount_bits=64', { clusterSize: 2 * MiB, refcountBits: 64 }),
  target('qcow2', 'extended_l2=on,cluster_size=32k', { extendedL2: true, clusterSize: 32 * KiB }),
  target('qcow2', 'compat=0.10', { compat: '0.10' }),
  target('qcow2', 'backing_file=elsewhere.qcow2', { hasBackingFile: true }),
  target('qcow2', 'preallocation=full', { preallocation: 'full' }),
  target('qcow2', 'preallocation=metadata,cluster_size=8k', { preallocation: 'metadata', clusterSize: 8 * KiB }),
];

async function openSource(dir: string, source: Source): Promise<BlockDevice> {
  const format = source.args?.includes('-f') ? (source.args[source.args.indexOf('-f') + 1] as 'raw' | 'qcow2') : undefined;
  const device = await openImageFile(join(dir, source.file), format === undefined ? {} : { format });
  if (source.snapshot === undefined) return device;
  if (!(device instanceof Qcow2Device)) throw new Error('snapshot of a raw image');
  const { id, name } = source.snapshot;
  const snapshot = device.image.snapshots.find((s) => (id === undefined || s.id === id) && (name === undefined || s.name === name));
  if (snapshot === undefined) throw new Error(`no snapshot ${id}/${name}`);
  return device.snapshotView(snapshot);
}

async function expectSameAsQemu(dir: string, source: Source, targets: Target[] = TARGETS): Promise<void> {
  const device = await openSource(dir, source);
  try {
    for (const t of targets) {
      const ours = await measureImage(device, t.options);
      expect(ours, `measure ${t.args.join(' ')} ${(source.args ?? []).join(' ')} ${source.file}`).toEqual(
        qemuMeasure([...t.args, ...(source.args ?? []), source.file], dir),
      );
    }
  } finally {
    await device.close();
  }
}

describe.runIf(withQemuIo)('measureImage equals qemu-img measure FILE', () => {
  let dir: string;

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'qcowkit-measure-'));
    // Raw files: holes, data at unaligned places, written zeros, sizes that are not whole sectors.
    createRaw(dir, 'raw-holes.img', 64 * MiB, []);
    createRaw(dir, 'raw-full.img', 3 * MiB + 4096, [[0, 3 * MiB + 4096]]);
    createRaw(
      dir,
      'raw-sparse.img',
      100 * MiB,
      [
        [0, 1000],
        [70 * KiB, 5 * KiB],
        [MiB - 100, 200],
        [5 * MiB, 4 * MiB],
        [33 * MiB + 3 * KiB, 1],
        [100 * MiB - 4096, 4096],
      ],
      [[50 * MiB, 2 * MiB]],
    );
    createRaw(dir, 'raw-odd.img', 0, []);
    writeAt(join(dir, 'raw-odd.img'), 0, pattern(0, 1000)); // 1000 bytes: 2 sectors to qemu
    createRaw(dir, 'raw-tail.img', 10 * MiB + 300, [[10 * MiB, 300]]);

    // qcow2 with data, zero clusters, discarded and partial clusters.
    mustQemuImg(['create', '-q', '-f', 'qcow2', 'mixed.qcow2', '64M'], dir);
    mustQemuIo('mixed.qcow2', ['write -P 1 0 1M', 'write -z 2M 1M', 'write -P 2 3M 512', 'write -P 3 4M 256k', 'discard 4M 64k', 'write -z -u 4325376 64k', 'write -P 4 63M 1M'], dir);
    mustQemuImg(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=512', 'c512.qcow2', '8M'], dir);
    mustQemuIo('c512.qcow2', ['write -P 1 0 1536', 'write -P 2 1M 100k', 'write -z 2M 1M', 'write -P 3 7340544 512'], dir);
    mustQemuImg(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=2M,refcount_bits=1', 'c2m.qcow2', '100M'], dir);
    mustQemuIo('c2m.qcow2', ['write -P 1 4096 4096', 'write -P 2 10M 3M', 'write -z 40M 4M'], dir);
    mustQemuImg(['create', '-q', '-f', 'qcow2', '-o', 'extended_l2=on,cluster_size=64k', 'extl2.qcow2', '32M'], dir);
    mustQemuIo('extl2.qcow2', ['write -P 1 4k 2k', 'write -P 2 1M 8k', 'write -z 1050624 2k', 'write -P 3 2160640 4k', 'write -z 5M 128k'], dir);
    mustQemuImg(['create', '-q', '-f', 'qcow2', '-o', 'compat=0.10,cluster_size=4k', 'v2.qcow2', '16M'], dir);
    mustQemuIo('v2.qcow2', ['write -P 9 0 100k', 'write -z 1M 1M', 'write -P 8 15M 4k'], dir);
    // Compressed: convert -c of the sparse raw file.
    mustQemuImg(['convert', '-c', '-f', 'raw', '-O', 'qcow2', 'raw-sparse.img', 'compressed.qcow2'], dir);
    mustQemuImg(['convert', '-c', '-f', 'raw', '-O', 'qcow2', '-o', 'compression_type=zstd,cluster_size=16k', 'raw-sparse.img', 'compressed-zstd.qcow2'], dir);
    // Preallocated sources.
    for (const mode of ['metadata', 'falloc', 'full']) {
      mustQemuImg(['create', '-q', '-f', 'qcow2', '-o', `preallocation=${mode},cluster_size=16k`, `prealloc-${mode}.qcow2`, '8M'], dir);
      mustQemuIo(`prealloc-${mode}.qcow2`, ['write -P 5 1M 64k'], dir);
    }
    // qemu takes these for metadata-preallocated (more refcounted clusters than blocks held) and looks at the
    // host file's holes under their data clusters: a 4 KiB write in a 64 KiB cluster is 4 KiB of data to it.
    mustQemuImg(['create', '-q', '-f', 'qcow2', '-o', 'preallocation=metadata', 'prealloc-meta64k.qcow2', '16M'], dir);
    mustQemuIo('prealloc-meta64k.qcow2', ['write -P 1 1056768 4k', 'write -P 2 3M 100k', 'write -z 8M 1M'], dir);
    mustQemuImg(['create', '-q', '-f', 'qcow2', '-o', 'preallocation=metadata,compat=0.10,cluster_size=4k', 'prealloc-meta-v2.qcow2', '8M'], dir);
    mustQemuIo('prealloc-meta-v2.qcow2', ['write -P 1 512 1k', 'write -P 2 5M 64k'], dir);
    mustQemuImg(['create', '-q', '-f', 'qcow2', '-b', 'prealloc-meta64k.qcow2', '-F', 'qcow2', '-o', 'cluster_size=4k', 'over-prealloc.qcow2'], dir);
    mustQemuIo('over-prealloc.qcow2', ['write -P 7 12M 8k'], dir);
    // External data file.
    mustQemuImg(['create', '-q', '-f', 'qcow2', '-o', 'data_file=datafile.data,cluster_size=4k', 'datafile.qcow2', '16M'], dir);
    mustQemuIo('datafile.qcow2', ['write -P 6 0 64k', 'write -z 1M 64k', 'write -P 7 8M 12k'], dir);

    // Chains: qcow2 over qcow2 over raw; an overlay on a shorter backing file.
    createRaw(dir, 'base.raw', 32 * MiB, [[0, MiB], [20 * MiB, 3 * MiB]]);
    mustQemuImg(['create', '-q', '-f', 'qcow2', '-b', 'base.raw', '-F', 'raw', '-o', 'cluster_size=4k', 'mid.qcow2'], dir);
    mustQemuIo('mid.qcow2', ['write -P 2 512k 1M', 'write -z 20M 1M', 'write -P 3 30M 8k'], dir);
    mustQemuImg(['create', '-q', '-f', 'qcow2', '-b', 'mid.qcow2', '-F', 'qcow2', '-o', 'cluster_size=16k', 'top.qcow2'], dir);
    mustQemuIo('top.qcow2', ['write -P 4 0 16k', 'write -z 21M 2M', 'write -P 5 31M 4k'], dir);
    mustQemuImg(['create', '-q', '-f', 'qcow2', 'short-base.qcow2', '4M'], dir);
    mustQemuIo('short-base.qcow2', ['write -P 1 0 4M'], dir);
    mustQemuImg(['create', '-q', '-f', 'qcow2', '-b', 'short-base.qcow2', '-F', 'qcow2', 'short-overlay.qcow2', '16M'], dir);
    mustQemuIo('short-overlay.qcow2', ['write -P 2 8M 64k'], dir);

    // Snapshots: each shows different data.
    mustQemuImg(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4k', 'snap.qcow2', '32M'], dir);
    mustQemuIo('snap.qcow2', ['write -P 1 0 1M'], dir);
    mustQemuImg(['snapshot', '-c', 'one', 'snap.qcow2'], dir);
    mustQemuIo('snap.qcow2', ['write -P 2 8M 3M', 'discard 0 512k'], dir);
    mustQemuImg(['snapshot', '-c', 'two', 'snap.qcow2'], dir);
    mustQemuIo('snap.qcow2', ['write -z -u 0 1M', 'write -P 3 20M 64k'], dir);

    // Persistent bitmaps: granularities from 512 bytes to 2 GiB, names short and the longest allowed.
    mustQemuImg(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4k', 'bitmaps.qcow2', '200M'], dir);
    mustQemuIo('bitmaps.qcow2', ['write -P 1 0 1M'], dir);
    mustQemuImg(['bitmap', '--add', '-g', '512', 'bitmaps.qcow2', 'fine'], dir);
    mustQemuImg(['bitmap', '--add', 'bitmaps.qcow2', 'default'], dir);
    mustQemuImg(['bitmap', '--add', '-g', '2G', '--disable', 'bitmaps.qcow2', 'coarse'], dir);
    mustQemuImg(['bitmap', '--add', '-g', '1M', 'bitmaps.qcow2', 'n'.repeat(1023)], dir);
    mustQemuImg(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=64k', 'many-bitmaps.qcow2', '3G'], dir);
    for (let i = 0; i < 40; i++) mustQemuImg(['bitmap', '--add', '-g', String(512 << (i % 12)), 'many-bitmaps.qcow2', `bitmap-${'x'.repeat(i * 3)}`], dir);
    // A bitmap left "in use" (a crashed writer) and a file a bitmap-unaware program touched (autoclear bit cleared).
    mustQemuImg(['create', '-q', '-f', 'qcow2', 'inuse.qcow2', '1G'], dir);
    mustQemuImg(['bitmap', '--add', '-g', '64k', 'inuse.qcow2', 'left-in-use'], dir);
    mustQemuImg(['bitmap', '--add', '-g', '4k', 'inuse.qcow2', 'consistent'], dir);
    patchU32(join(dir, 'inuse.qcow2'), bitmapDirectoryOffset(join(dir, 'inuse.qcow2')) + 12, (flags) => flags | 1);
    mustQemuImg(['create', '-q', '-f', 'qcow2', 'autoclear.qcow2', '1G'], dir);
    mustQemuImg(['bitmap', '--add', 'autoclear.qcow2', 'ignored'], dir);
    patchU32(join(dir, 'autoclear.qcow2'), 92, (bits) => bits & ~1); // low word of autoclear_features
  });

  afterAll(() => {
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
  });

  it('raw files: holes, unaligned data, written zeros, sizes that are not whole sectors', async () => {
    for (const file of ['raw-holes.img', 'raw-full.img', 'raw-sparse.img', 'raw-odd.img', 'raw-tail.img']) {
      await expectSameAsQemu(dir, { file, args: ['-f', 'raw'] });
    }
  });

  it('qcow2 with data, zero clusters, discards, partial clusters, every cluster size class', async () => {
    for (const file of ['mixed.qcow2', 'c512.qcow2', 'c2m.qcow2', 'v2.qcow2']) await expectSameAsQemu(dir, { file });
  });

  it('extended L2 sources: data and zeros at subcluster granularity', async () => {
    await expectSameAsQemu(dir, { file: 'extl2.qcow2' });
  });

  it('compressed sources', async () => {
    for (const file of ['compressed.qcow2', 'compressed-zstd.qcow2']) await expectSameAsQemu(dir, { file });
  });

  it('preallocated sources and an external data file', async () => {
    for (const file of ['prealloc-metadata.qcow2', 'prealloc-falloc.qcow2', 'prealloc-full.qcow2', 'datafile.qcow2']) await expectSameAsQemu(dir, { file });
  });

  it('metadata-preallocated sources: data clusters over host holes are zeros, in any layer', async () => {
    for (const file of ['prealloc-meta64k.qcow2', 'prealloc-meta-v2.qcow2', 'over-prealloc.qcow2']) await expectSameAsQemu(dir, { file });
    const device = await openImageFile(join(dir, 'prealloc-meta64k.qcow2'));
    try {
      expect(device instanceof Qcow2Device && (await hasMetadataPreallocation(device.image))).toBe(true);
    } finally {
      await device.close();
    }
  });

  it('backing chains count the data of every layer', async () => {
    for (const file of ['mid.qcow2', 'top.qcow2', 'short-overlay.qcow2']) await expectSameAsQemu(dir, { file });
    // Measuring one layer alone (-f raw of a qcow2 measures its bytes).
    await expectSameAsQemu(dir, { file: 'top.qcow2', args: ['-f', 'raw'] });
  });

  it('internal snapshots (-l)', async () => {
    await expectSameAsQemu(dir, { file: 'snap.qcow2' });
    await expectSameAsQemu(dir, { file: 'snap.qcow2', args: ['-l', 'snapshot.name=one'], snapshot: { name: 'one' } });
    await expectSameAsQemu(dir, { file: 'snap.qcow2', args: ['-l', 'two'], snapshot: { name: 'two' } });
    await expectSameAsQemu(dir, { file: 'snap.qcow2', args: ['-l', 'snapshot.id=1'], snapshot: { id: '1' } });
  });

  it('bitmaps: shown for qcow2 v3 sources and v3 targets, sized per target cluster', async () => {
    for (const file of ['bitmaps.qcow2', 'many-bitmaps.qcow2', 'inuse.qcow2', 'autoclear.qcow2']) await expectSameAsQemu(dir, { file });
    // Bitmap-less v3 sources show "bitmaps": 0, v2 sources and raw sources none at all.
    const shown = async (file: string, t: Target): Promise<boolean> => {
      const device = await openImageFile(join(dir, file));
      try {
        return (await measureImage(device, t.options)).bitmaps !== undefined;
      } finally {
        await device.close();
      }
    };
    expect(await shown('mixed.qcow2', target('qcow2', undefined))).toBe(true);
    expect(await shown('bitmaps.qcow2', target('qcow2', 'compat=0.10', { compat: '0.10' }))).toBe(false);
    expect(await shown('bitmaps.qcow2', target('raw', undefined))).toBe(false);
    expect(await shown('v2.qcow2', target('qcow2', undefined))).toBe(false);
    expect(await shown('raw-sparse.img', target('qcow2', undefined))).toBe(false);
  });

  it('every image of the fixture corpora (committed, and generated when present)', async () => {
    const few = [TARGETS[0]!, TARGETS[1]!, TARGETS[3]!, TARGETS[6]!];
    for (const corpus of [corpusDir(), generatedDir()].filter(hasCorpus)) {
      for (const image of loadManifest(corpus)) {
        await expectSameAsQemu(corpus, { file: image.file }, few);
        for (const snapshot of image.snapshots) {
          await expectSameAsQemu(corpus, { file: image.file, args: ['-l', `snapshot.name=${snapshot}`], snapshot: { name: snapshot } }, few);
        }
      }
    }
  });
});
