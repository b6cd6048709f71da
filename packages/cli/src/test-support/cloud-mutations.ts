/**
 * Hostile images of the cloud formats (VHD, VMDK, VHDX): seeds made by qemu-img / qemu-io (and a stream-optimized
 * VMDK by qcowkit, the only writer of its footer layout here), mutated deterministically: header fields set to
 * values that break sizes and offsets, bytes scribbled over the metadata (re-sealed with a good checksum half of
 * the time, so the reader meets the damage itself and not only a bad checksum), truncations. Used by
 * cloud-formats.hostile.test.ts and by scripts/hostile-sweep.ts --cloud, which judge qcowkit against qemu-img on
 * each mutant with the rules of hostile-mutations.ts.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { crc32c } from '../../../qcow2/src/formats/vhdx/crc32c.js';
import { vhdChecksum } from '../../../qcow2/src/formats/vpc/footer.js';
import { must, xorshift } from './hostile-mutations.js';
import { CLI_MAIN } from './run-cli.js';

export type CloudFormat = 'vpc' | 'vmdk' | 'vhdx';

export interface CloudSeed {
  name: string;
  format: CloudFormat;
  bytes: Uint8Array;
}

export interface CloudMutant {
  name: string;
  format: CloudFormat;
  bytes: Uint8Array;
}

/** The seeds, made in `dir`: 16 MiB disks with data at a few places (so tables have entries). */
export function makeCloudSeeds(dir: string): CloudSeed[] {
  must('qemu-img', ['create', '-q', '-f', 'raw', 'seed.raw', '16M'], dir);
  must('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 0 1M', '-c', 'write -P 0x22 5M 200k', '-c', 'write -P 0x33 15M 1M', 'seed.raw'], dir);
  const seeds: Array<[string, CloudFormat, string[], 'qemu' | 'qcowkit']> = [
    ['vpc-dynamic.vhd', 'vpc', [], 'qemu'],
    ['vpc-fixed.vhd', 'vpc', ['-o', 'subformat=fixed'], 'qemu'],
    ['vmdk-sparse.vmdk', 'vmdk', [], 'qemu'],
    ['vmdk-stream-qemu.vmdk', 'vmdk', ['-o', 'subformat=streamOptimized'], 'qemu'],
    ['vmdk-stream.vmdk', 'vmdk', ['-o', 'subformat=streamOptimized'], 'qcowkit'],
    ['vhdx-dynamic.vhdx', 'vhdx', ['-o', 'block_size=1M'], 'qemu'],
  ];
  for (const [name, format, options, maker] of seeds) {
    const args = ['convert', '-f', 'raw', '-O', format, ...options, 'seed.raw', name];
    if (maker === 'qemu') must('qemu-img', args, dir);
    else must(process.execPath, [CLI_MAIN, ...args], dir);
  }
  return seeds.map(([name, format]) => ({ name, format, bytes: new Uint8Array(readFileSync(join(dir, name))) }));
}

/** Fields worth setting: [name, offset, width in bytes, little-endian]. */
function fieldsOf(seed: CloudSeed): Array<[string, number, 2 | 4 | 8, boolean]> {
  const end = seed.bytes.length;
  switch (seed.format) {
    case 'vpc': {
      const footer = seed.name.includes('fixed') ? end - 512 : 0;
      return [
        ['footer.data_offset', footer + 16, 8, false],
        ['footer.current_size', footer + 48, 8, false],
        ['footer.cylinders', footer + 56, 2, false],
        ['footer.disk_type', footer + 60, 4, false],
        ['dyn.table_offset', 512 + 16, 8, false],
        ['dyn.max_table_entries', 512 + 28, 4, false],
        ['dyn.block_size', 512 + 32, 4, false],
        ['bat[0]', 1536, 4, false],
        ['bat[2]', 1536 + 8, 4, false],
      ];
    }
    case 'vmdk':
      return [
        ['version', 4, 4, true],
        ['flags', 8, 4, true],
        ['capacity', 12, 8, true],
        ['grain_size', 20, 8, true],
        ['desc_offset', 28, 8, true],
        ['gtes_per_gt', 44, 4, true],
        ['gd_offset', 56, 8, true],
        ['overhead', 64, 8, true],
        ['compress', 77, 2, true],
        ['footer.gd_offset', end - 1024 + 56, 8, true],
        ['footer.capacity', end - 1024 + 12, 8, true],
      ];
    case 'vhdx':
      return [
        ['header1.sequence', 65536 + 8, 8, true],
        ['header1.log_length', 65536 + 68, 4, true],
        ['header1.log_offset', 65536 + 72, 8, true],
        ['header2.log_offset', 131072 + 72, 8, true],
        ['region.entry_count', 196608 + 8, 4, true],
        ['region.bat_offset', 196608 + 16 + 16, 8, true],
        ['region.bat_length', 196608 + 16 + 24, 4, true],
        ['region.meta_offset', 196608 + 48 + 16, 8, true],
        ['bat[0]', 2 * 1024 * 1024, 8, true],
        ['bat[1]', 2 * 1024 * 1024 + 8, 8, true],
        ['meta.block_size', 3 * 1024 * 1024 + 65536, 4, true],
        ['meta.virtual_size', 3 * 1024 * 1024 + 65536 + 8, 8, true],
        ['meta.logical_sector', 3 * 1024 * 1024 + 65536 + 32, 4, true],
      ];
  }
}

/** Byte ranges holding metadata, to scribble over. */
function metadataOf(seed: CloudSeed): Array<[string, number, number]> {
  const end = seed.bytes.length;
  switch (seed.format) {
    case 'vpc':
      return seed.name.includes('fixed') ? [['footer', end - 512, 512]] : [['footer', 0, 512], ['dynamic-header', 512, 1024], ['bat', 1536, 512], ['tail-footer', end - 512, 512]];
    case 'vmdk':
      return [['header', 0, 512], ['descriptor', 512, 1024], ['tables', 10 * 1024, 8 * 1024], ['grains', 64 * 1024, 16 * 1024], ['end', end - 4096, 4096]];
    case 'vhdx':
      return [['headers', 65536, 8192], ['region-table', 196608, 512], ['bat', 2 * 1024 * 1024, 512], ['metadata', 3 * 1024 * 1024, 512], ['metadata-items', 3 * 1024 * 1024 + 65536, 64]];
  }
}

/** Puts valid checksums back over a mutated header structure, so the reader meets the damage itself. */
function reseal(seed: CloudSeed, bytes: Uint8Array): void {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (seed.format === 'vpc') {
    for (const at of seed.name.includes('fixed') ? [bytes.length - 512] : [0]) {
      if (at >= 0 && at + 512 <= bytes.length) view.setUint32(at + 64, vhdChecksum(bytes.subarray(at, at + 512), 64));
    }
  } else if (seed.format === 'vhdx') {
    for (const [at, size] of [[65536, 4096], [131072, 4096], [196608, 65536]] as const) {
      if (at + size <= bytes.length) view.setUint32(at + 4, crc32c(bytes.subarray(at, at + size), 4), true);
    }
  }
}

/** The `index`th mutant of `seed`: the same index always gives the same bytes. */
export function mutateCloud(seed: CloudSeed, index: number): CloudMutant {
  const random = xorshift(index + 7);
  const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)]!;
  const bytes = seed.bytes.slice();
  const view = new DataView(bytes.buffer);
  const kind = Math.floor(random() * 3);
  let name: string;
  if (kind === 0) {
    const [field, at, width, le] = pick(fieldsOf(seed));
    const value = pick([0, 1, 2, 3, 7, 0x1ff, 0x200, 0xfff, 0x7fff, 0xffff, 0x7fffffff, 0xffffffff, 2 ** 32, 2 ** 40, 2 ** 53, 2 ** 62, bytes.length, bytes.length - 512, Math.floor(random() * bytes.length)]);
    if (at >= 0 && at + width <= bytes.length) {
      if (width === 2) view.setUint16(at, value & 0xffff, le);
      else if (width === 4) view.setUint32(at, value >>> 0, le);
      else view.setBigUint64(at, BigInt(Math.min(value, 2 ** 63 - 1)) & 0xffffffffffffffffn, le);
    }
    name = `${field}=${value}`;
  } else if (kind === 1) {
    const [what, from, length] = pick(metadataOf(seed));
    const at = Math.max(0, from + Math.floor(random() * Math.max(1, length - 8)));
    const count = 1 + Math.floor(random() * 8);
    for (let i = 0; i < count && at + i < bytes.length; i++) bytes[at + i] = Math.floor(random() * 256);
    name = `${what}+${at - from}x${count}`;
  } else {
    const at = pick([Math.floor(random() * 4096), Math.floor(random() * bytes.length), bytes.length - 1 - Math.floor(random() * 4096), 65536 + Math.floor(random() * 3 * 1024 * 1024)]);
    return { name: `${seed.name}-${index}-truncated-at-${at}`, format: seed.format, bytes: bytes.subarray(0, Math.max(0, Math.min(bytes.length, at))) };
  }
  const sealed = random() < 0.5;
  if (sealed) reseal(seed, bytes);
  return { name: `${seed.name}-${index}-${name}${sealed ? '-resealed' : ''}`, format: seed.format, bytes };
}
