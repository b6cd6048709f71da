/**
 * Images damaged on purpose, for the check and repair tests: each case makes a small image with qemu-img/qemu-io
 * (or copies one from the corpus) and corrupts it precisely, plus helpers to run qemu-img check on it and to
 * compare a CheckReport with what qemu-img prints.
 *
 * Over 400 lines: a catalogue, one small case after another; the check, repair and CLI tests share it.
 */
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { corpusDir, qemuImg, qemuIo, type QemuCheckResult } from '../../../../fixtures/corpus.js';
import type { CheckReport } from '../engine/check.js';
import { bitmapsExtensionOf } from '../format/header-extensions.js';
import { decodeHeader, type Qcow2Header } from '../format/header.js';
import { decodeSnapshotEntry, encodeSnapshotTable, type SnapshotEntry } from '../format/snapshot-table.js';

/** A qcow2 file's bytes with just enough structure knowledge to corrupt it precisely. */
export class ImageBytes {
  bytes: Uint8Array;
  view: DataView;
  header: Qcow2Header;

  constructor(readonly path: string) {
    this.bytes = new Uint8Array(readFileSync(path));
    this.view = new DataView(this.bytes.buffer, this.bytes.byteOffset, this.bytes.byteLength);
    this.header = decodeHeader(this.bytes.subarray(0, Math.min(this.bytes.length, 2 * 1024 * 1024)));
  }
  get clusterSize(): number {
    return 2 ** this.header.clusterBits;
  }
  get entryBytes(): number {
    return (this.header.incompatibleFeatures & 16n) !== 0n ? 16 : 8;
  }
  u64(at: number): bigint {
    return this.view.getBigUint64(at);
  }
  setU64(at: number, value: bigint): void {
    this.view.setBigUint64(at, value);
  }
  offsetOf(entry: bigint): number {
    return Number(entry & 0x00fffffffffffe00n);
  }
  /** Byte position of the L2 entry mapping `guest` through the L1 table at `l1Offset` (active by default). */
  l2EntryAt(guest: number, l1Offset = this.header.l1TableOffset): number {
    const perTable = this.clusterSize / this.entryBytes;
    const cluster = Math.floor(guest / this.clusterSize);
    const l2 = this.offsetOf(this.u64(l1Offset + Math.floor(cluster / perTable) * 8));
    if (l2 === 0) throw new Error(`no L2 table for guest offset ${guest}`);
    return l2 + (cluster % perTable) * this.entryBytes;
  }
  /** Host cluster index of the data cluster mapping `guest`. */
  hostCluster(guest: number, l1Offset?: number): number {
    return Math.floor(this.offsetOf(this.u64(this.l2EntryAt(guest, l1Offset))) / this.clusterSize);
  }
  private refcountSlot(cluster: number): { block: number; index: number; bits: number } {
    const bits = 2 ** this.header.refcountOrder;
    const perBlock = (this.clusterSize * 8) / bits;
    const block = this.offsetOf(this.u64(this.header.refcountTableOffset + Math.floor(cluster / perBlock) * 8));
    return { block, index: cluster % perBlock, bits };
  }
  refcount(cluster: number): bigint {
    const { block, index, bits } = this.refcountSlot(cluster);
    if (bits === 64) return this.u64(block + index * 8);
    if (bits >= 8) return BigInt(bits === 8 ? this.view.getUint8(block + index) : bits === 16 ? this.view.getUint16(block + index * 2) : this.view.getUint32(block + index * 4));
    const bit = index * bits;
    return BigInt((this.view.getUint8(block + (bit >> 3)) >> (bit & 7)) & ((1 << bits) - 1));
  }
  setRefcount(cluster: number, value: bigint): void {
    const { block, index, bits } = this.refcountSlot(cluster);
    if (bits === 64) this.setU64(block + index * 8, value);
    else if (bits === 16) this.view.setUint16(block + index * 2, Number(value));
    else if (bits === 8) this.view.setUint8(block + index, Number(value));
    else if (bits === 32) this.view.setUint32(block + index * 4, Number(value));
    else {
      const bit = index * bits;
      const mask = ((1 << bits) - 1) << (bit & 7);
      const at = block + (bit >> 3);
      this.view.setUint8(at, (this.view.getUint8(at) & ~mask) | ((Number(value) << (bit & 7)) & mask));
    }
  }
  /** The snapshots' L1 table offsets, in table order. */
  snapshotL1Offsets(): number[] {
    const out: number[] = [];
    let at = this.header.snapshotsOffset;
    for (let i = 0; i < this.header.nbSnapshots; i++) {
      out.push(Number(this.u64(at)));
      const idSize = this.view.getUint16(at + 12);
      const nameSize = this.view.getUint16(at + 14);
      const extra = this.view.getUint32(at + 36);
      at += Math.ceil((40 + extra + idSize + nameSize) / 8) * 8;
    }
    return out;
  }
  save(): void {
    writeFileSync(this.path, this.bytes);
  }
}

function run(ok: { status: number; stderr: string; stdout: string }, what: string): void {
  if (ok.status !== 0) throw new Error(`${what} failed (${ok.status}): ${ok.stderr}${ok.stdout}`);
}

/** A fresh image made by qemu-img create and written by qemu-io. */
export function makeImage(path: string, createOptions: string, size: string, ioCommands: string[], cwd = dirname(path)): void {
  run(qemuImg(['create', '-f', 'qcow2', '-o', createOptions, basename(path), size], { cwd }), 'qemu-img create');
  if (ioCommands.length > 0) run(qemuIo(['-f', 'qcow2', ...ioCommands.flatMap((c) => ['-c', c]), basename(path)], { cwd }), 'qemu-io');
}

export interface BrokenCase {
  name: string;
  /** Creates the image in `dir` and returns its file name (relative to dir). */
  make(dir: string): string;
  /** Needs qemu-io (not only qemu-img). */
  io?: boolean;
  /** qemu finds nothing wrong (the damage is one qemu tolerates). */
  clean?: boolean;
  /** Qcow2Image.open refuses the image; qemu-img check (and checkStorage) still examine it. */
  unopenable?: boolean;
  /** A repair cannot be safe: repairStorage stops with a Qcow2Error before writing anything. */
  repairRefused?: boolean;
}

function patch(path: string, change: (image: ImageBytes) => void): void {
  const image = new ImageBytes(path);
  change(image);
  image.save();
}

function fromCorpus(file: string, change: (image: ImageBytes) => void): (dir: string) => string {
  return (dir) => {
    const target = join(dir, basename(file));
    copyFileSync(join(corpusDir(), file), target);
    patch(target, change);
    return basename(file);
  };
}

function fresh(name: string, options: string, size: string, io: string[], change: (image: ImageBytes) => void, snapshot?: string): (dir: string) => string {
  return (dir) => {
    const path = join(dir, `${name}.qcow2`);
    makeImage(path, options, size, io);
    if (snapshot !== undefined) run(qemuImg(['snapshot', '-c', snapshot, `${name}.qcow2`], { cwd: dir }), 'qemu-img snapshot');
    patch(path, change);
    return `${name}.qcow2`;
  };
}

const DATA = ['write -P 0x11 0 64k', 'write -P 0x22 1M 8k', 'write -z 128k 8k'];
const COPIED = 1n << 63n;

/** Every kind of damage the tests inflict, each on its own small image. */
export const brokenCases: BrokenCase[] = [
  { name: 'leaked cluster', io: true, make: fresh('leak', 'cluster_size=4096', '4M', DATA, (i) => i.setU64(i.l2EntryAt(12288), 0n)) },
  { name: 'refcount cleared by hand', io: true, make: fresh('refzero', 'cluster_size=4096', '4M', DATA, (i) => i.setRefcount(i.hostCluster(8192), 0n)) },
  { name: 'refcount too high', io: true, make: fresh('refhigh', 'cluster_size=4096', '4M', DATA, (i) => i.setRefcount(i.hostCluster(8192), 2n)) },
  { name: 'refcount too low', io: true, make: fresh('reflow', 'cluster_size=4096', '4M', DATA, (i) => i.setRefcount(i.hostCluster(8192), 1n), 's1') },
  {
    name: 'COPIED flag missing',
    io: true,
    make: fresh('copied', 'cluster_size=4096', '4M', DATA, (i) => i.setU64(i.l2EntryAt(4096), i.u64(i.l2EntryAt(4096)) & ~COPIED)),
  },
  {
    name: 'misaligned data cluster',
    io: true,
    make: fresh('misaligned', 'cluster_size=4096', '4M', DATA, (i) => i.setU64(i.l2EntryAt(12288), i.u64(i.l2EntryAt(12288)) + 512n)),
  },
  {
    name: 'misaligned preallocated zero cluster',
    io: true,
    make: fresh('prezero', 'cluster_size=4096', '4M', DATA, (i) => i.setU64(i.l2EntryAt(12288), i.u64(i.l2EntryAt(12288)) + 512n + 1n)),
  },
  {
    name: 'refcount block past the end of the file',
    io: true,
    make: fresh('rbeof', 'cluster_size=4096', '4M', DATA, (i) => i.setU64(i.header.refcountTableOffset, 0x100000n)),
  },
  {
    name: 'refcount table entry with reserved bits',
    io: true,
    make: fresh('rbres', 'cluster_size=4096', '4M', DATA, (i) => i.setU64(i.header.refcountTableOffset, i.u64(i.header.refcountTableOffset) | 0x10n)),
  },
  {
    name: 'unaligned refcount block',
    io: true,
    make: fresh('rbmis', 'cluster_size=4096', '4M', DATA, (i) => i.setU64(i.header.refcountTableOffset, i.u64(i.header.refcountTableOffset) + 512n)),
  },
  {
    name: 'L1 and L2 entries with reserved bits',
    io: true,
    make: fresh('reserved', 'cluster_size=4096', '4M', DATA, (i) => {
      i.setU64(i.header.l1TableOffset, i.u64(i.header.l1TableOffset) | 4n);
      i.setU64(i.l2EntryAt(4096), i.u64(i.l2EntryAt(4096)) | 2n);
    }),
  },
  {
    name: 'L2 entry past the end of the file',
    io: true,
    make: fresh('l2eof', 'cluster_size=4096', '4M', DATA, (i) => i.setU64(i.l2EntryAt(12288), COPIED | 0x4000000n)),
  },
  {
    name: 'L1 entry past the end of the file',
    io: true,
    make: fresh('l1eof', 'cluster_size=4096', '4M', DATA, (i) => i.setU64(i.header.l1TableOffset, COPIED | 0x4000000n)),
  },
  {
    name: 'L2 table shared by two L1 entries',
    io: true,
    make: fresh('sharedl2', 'cluster_size=4096', '8M', DATA, (i) => i.setU64(i.header.l1TableOffset + 8, i.u64(i.header.l1TableOffset))),
  },
  {
    name: 'data cluster overlapping the refcount table',
    io: true,
    make: fresh('overlap', 'cluster_size=4096', '4M', DATA, (i) => i.setU64(i.l2EntryAt(12288), COPIED | BigInt(i.header.refcountTableOffset))),
  },
  {
    name: 'file truncated inside the last cluster',
    io: true,
    clean: true,
    make: (dir) => {
      const path = join(dir, 'truncated.qcow2');
      makeImage(path, 'cluster_size=4096', '4M', DATA);
      const bytes = readFileSync(path);
      writeFileSync(path, bytes.subarray(0, bytes.length - 512));
      return 'truncated.qcow2';
    },
  },
  // Snapshots: shared L2 tables and data clusters count once per reference.
  {
    name: 'snapshots: refcount of a shared cluster cleared',
    make: fromCorpus('snapshots.qcow2', (i) => i.setRefcount(i.hostCluster(0), 0n)),
  },
  {
    name: 'snapshots: snapshot L1 entry dropped (its clusters leak)',
    make: fromCorpus('snapshots.qcow2', (i) => i.setU64(i.snapshotL1Offsets()[0]!, 0n)),
  },
  {
    name: 'snapshots: shared L2 refcount too high, COPIED set in the active L1',
    make: fromCorpus('snapshots.qcow2', (i) => {
      const l2 = Math.floor(i.offsetOf(i.u64(i.header.l1TableOffset)) / i.clusterSize);
      i.setRefcount(l2, i.refcount(l2) + 1n);
      i.setU64(i.header.l1TableOffset, i.u64(i.header.l1TableOffset) | COPIED);
    }),
  },
  {
    name: 'snapshots: v3 entry without extra data (incomplete)',
    make: fromCorpus('snapshots.qcow2', (i) => {
      // Rewrite the table in place with the first entry's extra data dropped (the table only shrinks).
      const entries: SnapshotEntry[] = [];
      let at = 0;
      const table = i.bytes.subarray(i.header.snapshotsOffset);
      for (let n = 0; n < i.header.nbSnapshots; n++) {
        const decoded = decodeSnapshotEntry(table, at);
        if ('needed' in decoded) throw new Error('snapshot table past the end of the file');
        entries.push(decoded.entry);
        at = decoded.next;
      }
      entries[0] = { ...entries[0]!, extraData: new Uint8Array(0) };
      const bytes = encodeSnapshotTable(entries);
      i.bytes.fill(0, i.header.snapshotsOffset, i.header.snapshotsOffset + at);
      i.bytes.set(bytes, i.header.snapshotsOffset);
    }),
  },
  {
    name: 'snapshots: table does not fit in the file',
    unopenable: true,
    repairRefused: true,
    // 400 snapshots announced, 3 stored: the table runs past the end of the file, which reads as zeros.
    make: fromCorpus('snapshots.qcow2', (i) => i.view.setUint32(60, 400)),
  },
  { name: 'v2 image with a snapshot: leak', make: fromCorpus('v2.qcow2', (i) => i.setRefcount(i.hostCluster(0), i.refcount(i.hostCluster(0)) + 1n)) },
  // Compressed clusters: each host cluster the sectors touch counts once per reference.
  { name: 'compressed: entry dropped from a shared host cluster', make: fromCorpus('zlib-c512.qcow2', (i) => i.setU64(i.l2EntryAt(1024), 0n)) },
  {
    name: 'compressed: refcount of the packed host cluster cleared',
    make: fromCorpus('zlib-c512.qcow2', (i) => i.setRefcount(Number((i.u64(i.l2EntryAt(1024)) & ((1n << 61n) - 1n)) / 512n), 0n)),
  },
  {
    name: 'compressed: COPIED set on a compressed entry',
    make: fromCorpus('zstd.qcow2', (i) => {
      for (let guest = 0; ; guest += i.clusterSize) {
        const at = i.l2EntryAt(guest);
        if ((i.u64(at) & (1n << 62n)) !== 0n) return i.setU64(at, i.u64(at) | COPIED);
      }
    }),
  },
  // Persistent bitmaps: directory, tables and data clusters are counted.
  {
    name: 'bitmaps: bitmap table refcount cleared',
    make: fromCorpus('bitmaps.qcow2', (i) => {
      const ext = bitmapsExtensionOf(i.header.extensions)!;
      i.setRefcount(Math.floor(Number(i.u64(ext.bitmapDirectoryOffset)) / i.clusterSize), 0n);
    }),
  },
  {
    name: 'bitmaps: bitmap data cluster leaked',
    make: fromCorpus('bitmaps.qcow2', (i) => {
      const ext = bitmapsExtensionOf(i.header.extensions)!;
      const table = Number(i.u64(ext.bitmapDirectoryOffset));
      for (let at = table; ; at += 8) {
        const offset = i.offsetOf(i.u64(at));
        if (offset !== 0) {
          i.setRefcount(offset / i.clusterSize, i.refcount(offset / i.clusterSize) + 1n);
          return;
        }
      }
    }),
  },
  // Extended L2 entries: subcluster bitmaps.
  {
    name: 'extended L2: allocated and zero bits both set',
    make: fromCorpus('extl2.qcow2', (i) => {
      for (let guest = 0; ; guest += i.clusterSize) {
        const at = i.l2EntryAt(guest);
        const entry = i.u64(at);
        if (entry !== 0n && (entry & (1n << 62n)) === 0n) {
          const alloc = i.view.getUint32(at + 12);
          i.view.setUint32(at + 8, i.view.getUint32(at + 8) | alloc);
          return;
        }
      }
    }),
  },
  {
    name: 'extended L2: unallocated cluster with allocated subclusters, and a leak',
    make: fromCorpus('extl2.qcow2', (i) => {
      for (let guest = 0; ; guest += i.clusterSize) {
        const at = i.l2EntryAt(guest);
        const entry = i.u64(at);
        if (entry !== 0n && (entry & (1n << 62n)) === 0n) {
          i.setU64(at, 0n);
          i.view.setUint32(at + 8, 0);
          i.view.setUint32(at + 12, 1);
          return;
        }
      }
    }),
  },
  // External data file: data clusters have no refcounts, COPIED must still be set.
  {
    name: 'external data file: COPIED missing, and a leak',
    io: true,
    make: (dir) => {
      makeImage(join(dir, 'ext.qcow2'), 'cluster_size=4096,data_file=ext.data', '1M', ['write -P 0x33 0 32k']);
      patch(join(dir, 'ext.qcow2'), (i) => {
        i.setU64(i.l2EntryAt(8192), i.u64(i.l2EntryAt(8192)) & ~COPIED);
        i.setRefcount(0, 2n);
      });
      return 'ext.qcow2';
    },
  },
  // 512-byte clusters with 1- and 64-bit refcounts.
  {
    name: '512-byte clusters, 1-bit refcounts: leak',
    io: true,
    make: fresh('r1leak', 'cluster_size=512,refcount_bits=1', '1M', ['write -P 7 0 16k'], (i) => i.setU64(i.l2EntryAt(2048), 0n)),
  },
  {
    name: '512-byte clusters, 1-bit refcounts: refcount cleared',
    io: true,
    make: fresh('r1zero', 'cluster_size=512,refcount_bits=1', '1M', ['write -P 7 0 16k'], (i) => i.setRefcount(i.hostCluster(1024), 0n)),
  },
  {
    name: '512-byte clusters, 64-bit refcounts: refcount 2^40',
    io: true,
    make: fresh('r64high', 'cluster_size=512,refcount_bits=64', '1M', ['write -P 7 0 16k'], (i) => i.setRefcount(i.hostCluster(1024), 1n << 40n)),
  },
  {
    name: '512-byte clusters, 64-bit refcounts: refcount cleared',
    io: true,
    make: fresh('r64zero', 'cluster_size=512,refcount_bits=64', '1M', ['write -P 7 0 16k'], (i) => i.setRefcount(i.hostCluster(1024), 0n)),
  },
  {
    name: '512-byte clusters, 1-bit refcounts: compressed cluster referenced twice (refcount overflow)',
    io: true,
    make: fresh('r1overflow', 'cluster_size=512,refcount_bits=1', '1M', ['write -c -P 5 0 512'], (i) => i.setU64(i.l2EntryAt(512), i.u64(i.l2EntryAt(0)))),
  },
  // Left dirty by a crash under lazy refcounts.
  { name: 'dirty image', make: fromCorpus('dirty.qcow2', () => {}) },
];

// ---------------------------------------------------------------------------------------------------------

/** qemu-img check's JSON plus its exit status and the lines it printed on stderr. */
export interface QemuCheck {
  status: number;
  json: QemuCheckResult | undefined;
  messages: string[];
}

export function qemuCheck(file: string, cwd: string, extra: string[] = []): QemuCheck {
  const r = qemuImg(['check', '--output=json', ...extra, file], { cwd });
  const messages = r.stderr.split('\n').filter((line) => line !== '' && !line.startsWith('qemu-img: '));
  return { status: r.status, json: r.stdout.trim() === '' ? undefined : (JSON.parse(r.stdout) as QemuCheckResult), messages };
}

/** The report as qemu-img check's JSON members (optional ones only when non-zero). */
export function asQemuJson(report: CheckReport, filename: string): QemuCheckResult {
  const out: QemuCheckResult = { filename, format: 'qcow2', 'check-errors': report.checkErrors };
  const put = (key: string, value: number): void => {
    if (value !== 0) out[key] = value;
  };
  put('image-end-offset', report.imageEndOffset);
  put('corruptions', report.corruptions);
  put('leaks', report.leaks);
  put('corruptions-fixed', report.corruptionsFixed);
  put('leaks-fixed', report.leaksFixed);
  put('total-clusters', report.totalClusters);
  put('allocated-clusters', report.allocatedClusters);
  put('fragmented-clusters', report.fragmentedClusters);
  put('compressed-clusters', report.compressedClusters);
  return out;
}

/** qemu-img check's exit status for a report. */
export function exitStatus(report: CheckReport): number {
  if (report.failure !== undefined || report.checkErrors !== 0) return 1;
  return report.corruptions !== 0 ? 2 : report.leaks !== 0 ? 3 : 0;
}

