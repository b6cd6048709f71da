/**
 * Hostile images: qemu-made seed images, mutated deterministically (header fields, metadata bytes, compressed
 * streams, truncations, overlapping and huge tables). Used by the hostile-image sweep (scripts/hostile-sweep.ts),
 * which runs qcowkit and qemu-img on each and reports every disagreement that matters, and by the hostile tests.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

export interface Seed {
  name: string;
  bytes: Uint8Array;
}

/** Runs a tool in `cwd`; throws with its output when it fails. */
export function must(command: string, args: string[], cwd: string): void {
  const r = spawnSync(command, args, { cwd, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${command} ${args.join(' ')}: ${r.stdout}${r.stderr}`);
}

/** Seed images made by qemu-img/qemu-io in `dir`: zlib and zstd compressed clusters, snapshots, 512-byte clusters, extended L2. */
export function makeSeeds(dir: string): Seed[] {
  const io = (image: string, commands: string[]): void => must('qemu-io', ['-f', 'qcow2', ...commands.flatMap((c) => ['-c', c]), image], dir);
  must('qemu-img', ['create', '-q', '-f', 'qcow2', 'zlib.qcow2', '8M'], dir);
  io('zlib.qcow2', ['write -P 0x11 0 1M', 'write -c -P 0x22 2M 512k', 'write -c -P 0x23 3M 64k']);
  must('qemu-img', ['snapshot', '-c', 's1', 'zlib.qcow2'], dir);
  io('zlib.qcow2', ['write -P 0x33 512k 1M']);
  must('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'compression_type=zstd', 'zstd.qcow2', '8M'], dir);
  io('zstd.qcow2', ['write -c -P 0x44 0 1M', 'write -P 0x45 4M 64k']);
  must('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=512', 'c512.qcow2', '1M'], dir);
  io('c512.qcow2', ['write -P 0x55 0 64k', 'write -c -P 0x56 128k 8k']);
  must('qemu-img', ['snapshot', '-c', 's1', 'c512.qcow2'], dir);
  must('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'extended_l2=on,cluster_size=32k', 'extl2.qcow2', '4M'], dir);
  io('extl2.qcow2', ['write -P 0x66 0 100k', 'write -z 200k 4k']);
  return ['zlib.qcow2', 'zstd.qcow2', 'c512.qcow2', 'extl2.qcow2'].map((name) => ({ name, bytes: new Uint8Array(readFileSync(join(dir, name))) }));
}

/** Where the structures of a (valid) seed lie, for aiming mutations. */
interface Layout {
  clusterSize: number;
  l1: number;
  l1Size: number;
  l2: number[];
  refcountTable: number;
  refcountBlocks: number[];
  snapshots: number;
  /** Host offsets of compressed streams. */
  compressed: number[];
  l2EntryBytes: number;
}

function layoutOf(bytes: Uint8Array): Layout {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const u64 = (at: number): number => Number(view.getBigUint64(at));
  const clusterBits = view.getUint32(20);
  const clusterSize = 2 ** clusterBits;
  const extended = (view.getBigUint64(72) & 16n) !== 0n;
  const l2EntryBytes = extended ? 16 : 8;
  const l1 = u64(40);
  const l1Size = view.getUint32(36);
  const l2: number[] = [];
  const compressed: number[] = [];
  for (let i = 0; i < l1Size; i++) {
    const offset = u64(l1 + i * 8) & 0x00fffffffffffe00;
    if (offset === 0) continue;
    l2.push(offset);
    for (let j = 0; j < clusterSize / l2EntryBytes; j++) {
      const entry = view.getBigUint64(offset + j * l2EntryBytes);
      if ((entry & (1n << 62n)) !== 0n) compressed.push(Number(entry & ((1n << BigInt(62 - (clusterBits - 8))) - 1n)));
    }
  }
  const refcountTable = u64(48);
  const refcountBlocks: number[] = [];
  for (let i = 0; i < (view.getUint32(56) * clusterSize) / 8; i++) {
    const block = u64(refcountTable + i * 8);
    if (block !== 0) refcountBlocks.push(block);
  }
  return { clusterSize, l1, l1Size, l2, refcountTable, refcountBlocks, snapshots: u64(64), compressed, l2EntryBytes };
}

/** A small deterministic random source: the same seed gives the same mutants on every run. */
export function xorshift(seed: number): () => number {
  let s = seed * 2654435761 || 1;
  return () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) / 0x100000000;
  };
}

const HEADER_FIELDS: Array<[name: string, at: number, bytes: 4 | 8]> = [
  ['version', 4, 4], ['backing_file_offset', 8, 8], ['backing_file_size', 16, 4], ['cluster_bits', 20, 4], ['size', 24, 8],
  ['crypt_method', 32, 4], ['l1_size', 36, 4], ['l1_table_offset', 40, 8], ['refcount_table_offset', 48, 8],
  ['refcount_table_clusters', 56, 4], ['nb_snapshots', 60, 4], ['snapshots_offset', 64, 8], ['incompatible_features', 72, 8],
  ['compatible_features', 80, 8], ['autoclear_features', 88, 8], ['refcount_order', 96, 4], ['header_length', 100, 4],
];

export interface Mutant {
  /** A name that says what was done, for reports and file names. */
  name: string;
  bytes: Uint8Array;
}

/** The `index`th mutant of `seed`: the same index always gives the same bytes. */
export function mutate(seed: Seed, index: number): Mutant {
  const random = xorshift(index + 1);
  const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)]!;
  const bytes = seed.bytes.slice();
  const view = new DataView(bytes.buffer);
  const layout = layoutOf(seed.bytes);
  const { clusterSize } = layout;
  const interesting = (current: number): number =>
    pick([0, 1, 7, 8, 511, 512, current + 1, Math.max(0, current - 1), current + 8, current + 512, current + clusterSize, current * 2, 0x7fffffff, 0xffffffff, 2 ** 32, 2 ** 40, 2 ** 53, bytes.length, bytes.length - 512, Math.floor(random() * bytes.length)]);
  const setField = (at: number, width: 4 | 8, value: number): void => {
    if (width === 4) view.setUint32(at, value >>> 0);
    else view.setBigUint64(at, BigInt(Math.min(value, Number.MAX_SAFE_INTEGER)) | (random() < 0.1 ? 1n << 63n : 0n));
  };
  const scribble = (from: number, length: number, what: string): string => {
    const at = from + Math.floor(random() * Math.max(1, length - 8));
    const count = 1 + Math.floor(random() * 8);
    for (let i = 0; i < count && at + i < bytes.length; i++) bytes[at + i] = Math.floor(random() * 256);
    return `${what}+${at - from}x${count}`;
  };
  const kind = Math.floor(random() * 9);
  let name: string;
  switch (kind) {
    case 0: {
      const [field, at, width] = pick(HEADER_FIELDS);
      const value = interesting(width === 4 ? view.getUint32(at) : Number(view.getBigUint64(at) & 0xfffffffffffffn));
      setField(at, width, value);
      name = `header-${field}=${value}`;
      break;
    }
    case 1:
      name = scribble(72, 4096 - 72, 'header-extensions');
      break;
    case 2:
      name = scribble(layout.l1, Math.max(8, layout.l1Size * 8), 'l1');
      break;
    case 3: {
      const table = pick(layout.l2.length > 0 ? layout.l2 : [layout.l1]);
      // An entry set to something odd: huge, misaligned, into metadata, compressed with many sectors.
      const entry = table + Math.floor(random() * (clusterSize / layout.l2EntryBytes)) * layout.l2EntryBytes;
      const target = pick([layout.l1, layout.refcountTable, 0, layout.snapshots, bytes.length, 2 ** 40, table]);
      const value = BigInt(target) | pick([0n, 1n << 63n, 1n << 62n, (1n << 62n) | (0xffn << BigInt(62 - (Math.log2(clusterSize) - 8))), 1n, 0x1ffn]);
      view.setBigUint64(entry, value & 0xffffffffffffffffn);
      name = `l2-entry-${entry - table}=0x${value.toString(16)}`;
      break;
    }
    case 4: {
      const block = pick([layout.refcountTable, ...layout.refcountBlocks]);
      name = scribble(block, clusterSize, block === layout.refcountTable ? 'refcount-table' : 'refcount-block');
      break;
    }
    case 5:
      name = layout.snapshots !== 0 ? scribble(layout.snapshots, 256, 'snapshot-table') : scribble(layout.l1, 8, 'l1');
      break;
    case 6: {
      if (layout.compressed.length === 0) {
        name = scribble(0, bytes.length, 'anywhere');
        break;
      }
      const stream = pick(layout.compressed);
      name = scribble(stream, 600, 'compressed-stream');
      break;
    }
    case 7: {
      const at = pick([
        Math.floor(random() * 104),
        Math.floor(random() * clusterSize),
        layout.l1 + Math.floor(random() * 8),
        pick(layout.l2.length > 0 ? layout.l2 : [layout.l1]) + Math.floor(random() * clusterSize),
        layout.refcountTable + Math.floor(random() * 64),
        Math.floor(random() * bytes.length),
        bytes.length - 1 - Math.floor(random() * 4096),
      ]);
      name = `truncated-at-${at}`;
      return { name: `${seed.name}-${index}-${name}`, bytes: bytes.subarray(0, Math.max(0, Math.min(bytes.length, at))) };
    }
    default: {
      // Overlaps: every L1 entry at one L2 table, an L1 entry at the header or refcount table, a refcount table
      // entry at the L1 table, a huge L1 table at a valid offset.
      const choice = Math.floor(random() * 4);
      if (choice === 0 && layout.l2.length > 0) {
        for (let i = 0; i < layout.l1Size; i++) view.setBigUint64(layout.l1 + i * 8, BigInt(layout.l2[0]!) | (1n << 63n));
        name = 'overlap-all-l1-one-l2';
      } else if (choice === 1) {
        view.setBigUint64(layout.l1, BigInt(pick([0, layout.refcountTable, layout.l1, layout.refcountBlocks[0] ?? 0])) | (1n << 63n));
        name = 'overlap-l1-into-metadata';
      } else if (choice === 2) {
        view.setBigUint64(layout.refcountTable, BigInt(pick([layout.l1, 0, layout.refcountTable])));
        name = 'overlap-refcount-table-into-metadata';
      } else {
        view.setUint32(36, pick([0x100000, 0x3ffffff, 0x400000]));
        name = 'huge-l1-size';
      }
    }
  }
  return { name: `${seed.name}-${index}-${name}`, bytes };
}
