/**
 * The cloud formats (VHD "vpc", VMDK, VHDX) against qemu-img 7.2 on the same files:
 * - reading: every image qemu-img made (fixtures/cloud-corpus.ts) converts to raw byte-identically to
 *   `qemu-img convert -O raw`, and `info`/`map` print what qemu-img prints;
 * - writing: what `qcowkit convert -O FMT` and `create -f FMT` write, qemu-img opens with the virtual size its
 *   own output has, checks clean (where it can check), compares equal to the source, lays out the same way,
 *   and a round trip qcow2 -> FMT -> qcow2 loses nothing.
 */
import { createHash } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLOUD_IMAGES, generateCloudCorpus } from '../../../../fixtures/cloud-corpus.js';
import { hasQemuImg, requireQemuImg } from '../../../../fixtures/corpus.js';
import { qcowkit, qemu } from '../test-support/run-cli.js';
import { randomGuid } from '../../../qcow2/src/formats/vhdx/guid.js';
import { QemuIoHolder } from '../../../qcow2/src/test-support/qemu-io-holder.js';
import { logEntry, withLog } from '../../../qcow2/src/test-support/vhdx-log-entry.js';

requireQemuImg();

function sha256(file: string): string {
  const hash = createHash('sha256');
  const buffer = Buffer.alloc(4 << 20);
  const fd = openSync(file, 'r');
  try {
    for (let at = 0; ; ) {
      const n = readSync(fd, buffer, 0, buffer.length, at);
      if (n === 0) break;
      hash.update(buffer.subarray(0, n));
      at += n;
    }
  } finally {
    closeSync(fd);
  }
  return hash.digest('hex');
}

/** info JSON without what depends on the filesystem. */
function infoOf(text: string): Record<string, unknown> {
  const info = JSON.parse(text) as Record<string, unknown>;
  delete info['actual-size'];
  return info;
}

/** info JSON of two different files made the same way: names and random ids (VMDK CIDs) aside. */
function sameKindInfo(text: string, name: string): Record<string, unknown> {
  const info = infoOf(text.replaceAll(name, 'IMAGE'));
  const data = (info['format-specific'] as { data?: Record<string, unknown> } | undefined)?.data;
  if (data !== undefined) delete data.cid;
  return info;
}

/** map JSON entries without host offsets (two writers may place the same data differently). */
function allocationOf(text: string): Array<Record<string, unknown>> {
  return (JSON.parse(text) as Array<Record<string, unknown>>).map(({ offset: _offset, ...rest }) => rest);
}

/** The output options exercised per format, with what they are. */
const WRITE_CASES: Array<{ format: 'vpc' | 'vmdk' | 'vhdx'; options: string[]; id: string }> = [
  { format: 'vpc', options: [], id: 'vpc dynamic' },
  { format: 'vpc', options: ['-o', 'subformat=fixed'], id: 'vpc fixed' },
  { format: 'vpc', options: ['-o', 'force_size'], id: 'vpc dynamic force_size' },
  { format: 'vpc', options: ['-o', 'subformat=fixed,force_size'], id: 'vpc fixed force_size (Azure)' },
  { format: 'vmdk', options: [], id: 'vmdk monolithicSparse' },
  { format: 'vmdk', options: ['-o', 'subformat=streamOptimized'], id: 'vmdk streamOptimized' },
  { format: 'vmdk', options: ['-o', 'subformat=streamOptimized,adapter_type=lsilogic,hwversion=10'], id: 'vmdk streamOptimized lsilogic hwversion 10 (OVA)' },
  { format: 'vmdk', options: ['-o', 'adapter_type=buslogic,compat6,zeroed_grain=on'], id: 'vmdk monolithicSparse buslogic compat6 zeroed_grain' },
  { format: 'vhdx', options: [], id: 'vhdx dynamic' },
  { format: 'vhdx', options: ['-o', 'subformat=fixed'], id: 'vhdx fixed' },
  { format: 'vhdx', options: ['-o', 'block_size=1M,log_size=2M'], id: 'vhdx 1 MiB blocks, 2 MiB log' },
  { format: 'vhdx', options: ['-o', 'block_state_zero=off'], id: 'vhdx block_state_zero=off' },
];

/** Sizes `create` is tried with: round, odd, one sector, CHS edge cases, zero. */
const CREATE_SIZES = ['100M', '1000001', '512', '0', '127G', '136899993600', '3G'];

describe.runIf(hasQemuImg())('cloud formats against qemu-img 7.2', { timeout: 600_000 }, () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'qcowkit-formats-cloud-'));
    generateCloudCorpus(dir);
    expect(qemu(['convert', '-f', 'raw', '-O', 'qcow2', 'mixed.raw', 'mixed.qcow2'], dir).status).toBe(0);
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  describe('reading what qemu-img wrote', () => {
    for (const image of CLOUD_IMAGES) {
      describe(`${image.file}: ${image.description}`, () => {
        const f = ['-f', image.format];
        it('converts to raw byte-identically to qemu-img convert -O raw', () => {
          const ours = qcowkit(['convert', ...f, '-O', 'raw', image.file, `${image.file}.ours.raw`], dir);
          expect(ours.stderr).toBe('');
          expect(ours.status).toBe(0);
          expect(qemu(['convert', ...f, '-O', 'raw', image.file, `${image.file}.qemu.raw`], dir).status).toBe(0);
          const size = statSync(join(dir, `${image.file}.ours.raw`)).size;
          expect(size).toBe(statSync(join(dir, `${image.file}.qemu.raw`)).size);
          // Multi-GiB sparse disks: qemu-img compare goes by the files' holes; smaller ones are hashed whole.
          if (size > 256 * 1024 * 1024) expect(qemu(['compare', '-f', 'raw', '-F', 'raw', `${image.file}.ours.raw`, `${image.file}.qemu.raw`], dir).status).toBe(0);
          else expect(sha256(join(dir, `${image.file}.ours.raw`))).toBe(sha256(join(dir, `${image.file}.qemu.raw`)));
          if (image.source !== undefined) expect(qemu(['compare', '-f', 'raw', '-F', 'raw', image.source, `${image.file}.ours.raw`], dir).status).toBe(0);
          rmSync(join(dir, `${image.file}.ours.raw`));
          rmSync(join(dir, `${image.file}.qemu.raw`));
        });
        it('info --output=json prints what qemu-img prints (with -f, and probed)', () => {
          for (const flags of [f, []]) {
            const ours = qcowkit(['info', ...flags, '--output=json', image.file], dir);
            const theirs = qemu(['info', ...flags, '--output=json', image.file], dir);
            expect(ours.status).toBe(theirs.status);
            expect(infoOf(ours.stdout)).toEqual(infoOf(theirs.stdout));
          }
        });
        it('info (human) prints what qemu-img prints', () => {
          const strip = (text: string): string => text.replace(/^disk size: .*$/m, '');
          expect(strip(qcowkit(['info', ...f, image.file], dir).stdout)).toBe(strip(qemu(['info', ...f, image.file], dir).stdout));
        });
        it(image.format === 'vhdx' ? 'map --output=json shows the BAT, where qemu-img 7.2 (no block status for vhdx) calls everything data' : 'map --output=json prints what qemu-img prints', () => {
          const ours = qcowkit(['map', ...f, '--output=json', image.file], dir);
          expect(ours.status).toBe(0);
          const theirs = qemu(['map', ...f, '--output=json', image.file], dir).stdout;
          if (image.format !== 'vhdx') {
            expect(ours.stdout).toBe(theirs);
            return;
          }
          const size = (JSON.parse(qemu(['info', ...f, '--output=json', image.file], dir).stdout) as { 'virtual-size': number })['virtual-size'];
          expect(theirs).toBe(`[{ "start": 0, "length": ${size}, "depth": 0, "present": true, "zero": false, "data": true}]\n`);
          // Ours: the same disk, with only the present blocks as data (that data is what qemu-img reads there).
          const entries = JSON.parse(ours.stdout) as Array<{ start: number; length: number; data: boolean }>;
          expect(entries.reduce((n, e) => n + e.length, 0)).toBe(size);
          if (image.file !== 'vhdx-empty.vhdx') expect(entries.some((e) => !e.data)).toBe(true);
        });
      });
    }
  });

  describe('writing: convert -O FMT', () => {
    for (const { format, options, id } of WRITE_CASES) {
      describe(id, () => {
        const ours = `out-${id.replace(/\W+/g, '-')}.ours`;
        const theirs = `out-${id.replace(/\W+/g, '-')}.qemu`;
        const f = ['-f', format];
        beforeAll(() => {
          const r = qcowkit(['convert', '-f', 'raw', '-O', format, ...options, 'mixed.raw', ours], dir);
          expect(r.stderr).toBe('');
          expect(r.status).toBe(0);
          expect(qemu(['convert', '-f', 'raw', '-O', format, ...options, 'mixed.raw', theirs], dir).status).toBe(0);
        });

        it('qemu-img opens it with the virtual size (and info) of its own output', () => {
          const a = sameKindInfo(qemu(['info', ...f, '--output=json', ours], dir).stdout, ours);
          const b = sameKindInfo(qemu(['info', ...f, '--output=json', theirs], dir).stdout, theirs);
          expect(a).toEqual(b);
        });
        it('qemu-img check accepts it as it accepts its own', () => {
          const a = qemu(['check', ...f, ours], dir);
          const b = qemu(['check', ...f, theirs], dir);
          expect(a.status).toBe(b.status);
          expect(a.stdout.replaceAll(ours, 'X')).toBe(b.stdout.replaceAll(theirs, 'X'));
        });
        it('qemu-img compare: identical to the source', () => {
          const r = qemu(['compare', ...f, '-F', 'raw', ours, 'mixed.raw'], dir);
          expect(r.stdout).toMatch(/Images are identical\./);
          expect(r.status).toBe(0);
        });
        it('allocates what qemu-img allocates (qemu-img map, offsets aside), in a file of comparable size', () => {
          expect(allocationOf(qemu(['map', ...f, '--output=json', ours], dir).stdout)).toEqual(allocationOf(qemu(['map', ...f, '--output=json', theirs], dir).stdout));
          const a = statSync(join(dir, ours));
          const b = statSync(join(dir, theirs));
          console.log(`${id}: qcowkit ${a.size} bytes (${a.blocks * 512} on disk), qemu-img ${b.size} bytes (${b.blocks * 512} on disk)`);
          expect(a.size).toBeLessThanOrEqual(Math.ceil(b.size * 1.05));
          expect(a.blocks).toBeLessThanOrEqual(Math.ceil(b.blocks * 1.05) + 8);
        });
        it('qcowkit reads it back as qemu-img does (raw bytes, map)', () => {
          expect(qcowkit(['convert', ...f, '-O', 'raw', ours, `${ours}.raw`], dir).status).toBe(0);
          expect(qemu(['convert', ...f, '-O', 'raw', ours, `${ours}.qraw`], dir).status).toBe(0);
          expect(sha256(join(dir, `${ours}.raw`))).toBe(sha256(join(dir, `${ours}.qraw`)));
          // (qemu-img 7.2 has no block status for vhdx: its map calls every byte data.)
          if (format !== 'vhdx') expect(qcowkit(['map', ...f, '--output=json', ours], dir).stdout).toBe(qemu(['map', ...f, '--output=json', ours], dir).stdout);
          rmSync(join(dir, `${ours}.raw`));
          rmSync(join(dir, `${ours}.qraw`));
        });
        it('round trip qcow2 -> FMT -> qcow2 is lossless', () => {
          expect(qcowkit(['convert', '-f', 'qcow2', '-O', format, ...options, 'mixed.qcow2', `${ours}.rt`], dir).status).toBe(0);
          expect(qcowkit(['convert', ...f, '-O', 'qcow2', `${ours}.rt`, `${ours}.rt.qcow2`], dir).status).toBe(0);
          expect(qemu(['check', `${ours}.rt.qcow2`], dir).status).toBe(0);
          const r = qemu(['compare', '-f', 'qcow2', '-F', 'qcow2', 'mixed.qcow2', `${ours}.rt.qcow2`], dir);
          expect(r.stdout).toMatch(/Images are identical\./);
          expect(r.status).toBe(0);
        });
      });
    }
  });

  describe('writing: create -f FMT', () => {
    const createCases = [
      ['vpc', []],
      ['vpc', ['-o', 'subformat=fixed']],
      ['vpc', ['-o', 'force_size']],
      ['vpc', ['-o', 'subformat=fixed,force_size']],
      ['vmdk', []],
      ['vmdk', ['-o', 'subformat=streamOptimized']],
      ['vmdk', ['-o', 'zeroed_grain=on,adapter_type=lsilogic']],
      ['vhdx', []],
      ['vhdx', ['-o', 'subformat=fixed']],
      ['vhdx', ['-o', 'block_size=1M,log_size=100k,block_state_zero=off']],
      ['vhdx', ['-o', 'block_size=3M']],
    ] as const;
    for (const [format, options] of createCases) {
      // CHS geometry makes VHD sizes the interesting ones; the other formats only round to sectors.
      // And one size over each format's limit (VHD 2040 GiB, VHDX 64 TiB): qemu-img's refusal, word for word.
      const tooLarge = format === 'vpc' ? ['3T'] : format === 'vhdx' ? ['65T'] : [];
      for (const size of [...(format === 'vpc' ? CREATE_SIZES : ['100M', '1000001', '0', '3G']), ...tooLarge]) {
        it(`create -f ${format} ${options.join(' ')} ${size}: same line, same virtual size, same file size as qemu-img create`, () => {
          const ours = qcowkit(['create', '-f', format, ...options, 'c.ours', size], dir);
          const theirs = qemu(['create', '-f', format, ...options, 'c.qemu', size], dir);
          expect(ours.stdout.replace('c.ours', 'X')).toBe(theirs.stdout.replace('c.qemu', 'X'));
          expect(ours.status).toBe(theirs.status);
          if (theirs.status !== 0) {
            expect(ours.stderr.replace(/^qcowkit: /, '').replace('c.ours', 'X')).toBe(theirs.stderr.replace(/^qemu-img: /, '').replace('c.qemu', 'X'));
            return;
          }
          const a = qemu(['info', '-f', format, '--output=json', 'c.ours'], dir);
          const b = qemu(['info', '-f', format, '--output=json', 'c.qemu'], dir);
          // (A fixed VHD of size 0 is only a footer, at offset 0: qemu-img cannot open its own.)
          expect(a.status).toBe(b.status);
          if (b.status === 0) expect(sameKindInfo(a.stdout, 'c.ours')).toEqual(sameKindInfo(b.stdout, 'c.qemu'));
          const [ourSize, theirSize] = [statSync(join(dir, 'c.ours')).size, statSync(join(dir, 'c.qemu')).size];
          // A stream-optimized VMDK is laid out as the specification streams it (markers, directory and footer
          // at the end), qemu's with its tables up front: comparable sizes, not equal ones.
          if (options.join(' ').includes('streamOptimized')) expect(ourSize).toBeLessThanOrEqual(theirSize + 8192);
          // A fixed VHDX here has every block present in place, the last one whole; qemu's ends the file at the
          // disk's last byte (and marks its blocks ZERO, to append them when written).
          else if (format === 'vhdx' && options.join(' ').includes('fixed')) expect(ourSize).toBeLessThanOrEqual(theirSize + 64 * 1024 * 1024);
          else expect(ourSize).toBe(theirSize);
          // (qemu-img map prints one zero-length entry for an empty disk, qcowkit map none: a map gap of all
          // formats; and it has no block status for vhdx.)
          if (size !== '0' && format !== 'vhdx') expect(qcowkit(['map', '-f', format, '--output=json', 'c.ours'], dir).stdout).toBe(qemu(['map', '-f', format, '--output=json', 'c.qemu'], dir).stdout);
        });
      }
    }
  });

  describe('broken images: one line naming the file, a non-zero exit, fast', () => {
    const broken: Array<[string, string, (bytes: Buffer) => Buffer, string]> = [
      ['vpc-truncated.vhd', 'vpc-dynamic.vhd', (b) => b.subarray(0, 3 * 1024 * 1024), 'vpc'],
      ['vpc-checksum.vhd', 'vpc-dynamic.vhd', (b) => { const c = Buffer.from(b); c[70] = c[70]! ^ 0xff; return c; }, 'vpc'],
      ['vpc-fixed-checksum.vhd', 'vpc-fixed.vhd', (b) => { const c = Buffer.from(b); c[c.length - 512 + 70] = c[c.length - 512 + 70]! ^ 0xff; return c; }, 'vpc'],
      ['vmdk-truncated.vmdk', 'vmdk-sparse.vmdk', (b) => b.subarray(0, 4096), 'vmdk'],
      ['vmdk-version.vmdk', 'vmdk-sparse.vmdk', (b) => { const c = Buffer.from(b); c[4] = 9; return c; }, 'vmdk'],
      ['vhdx-truncated.vhdx', 'vhdx-dynamic.vhdx', (b) => b.subarray(0, 9 * 1024 * 1024), 'vhdx'],
      ['vhdx-regions.vhdx', 'vhdx-dynamic.vhdx', (b) => { const c = Buffer.from(b); c[192 * 1024 + 40] = c[192 * 1024 + 40]! ^ 0xff; return c; }, 'vhdx'],
    ];
    for (const [name, from, damage, format] of broken) {
      for (const command of [['info'], ['map', '--output=json'], ['convert', '-O', 'raw'], ['compare']]) {
        it(`${command[0]} ${name}`, () => {
          writeFileSync(join(dir, name), damage(readFileSync(join(dir, from))));
          const extra = command[0] === 'convert' ? ['broken.raw'] : command[0] === 'compare' ? ['mixed.raw'] : [];
          const r = qcowkit([...command, '-f', format, name, ...extra], dir);
          expect(r.status).not.toBe(0);
          expect(r.stderr.trim().split('\n')).toHaveLength(1);
          expect(r.stderr).toContain(name);
          expect(r.stderr).not.toMatch(/at .*\.js:\d+/);
          expect(qemu([...command, '-f', format, name, ...extra], dir).status).not.toBe(0);
        });
      }
    }
  });

  describe('VHD footers qemu reads its own way', () => {
    /** vpc image `from` with its footer at `at` (from the end when negative) saying disk type `type`. */
    function retyped(from: string, name: string, type: number, at: number): void {
      const bytes = new Uint8Array(readFileSync(join(dir, from)));
      const offset = at < 0 ? bytes.length + at : at;
      const view = new DataView(bytes.buffer);
      view.setUint32(offset + 60, type);
      let sum = 0;
      for (let i = 0; i < 512; i++) if (i < 64 || i >= 68) sum += bytes[offset + i]!;
      view.setUint32(offset + 64, ~sum >>> 0);
      writeFileSync(join(dir, name), bytes);
    }
    it('a dynamic disk whose first footer says "fixed": qemu reads the file as it is, and so does qcowkit', () => {
      retyped('vpc-dynamic.vhd', 'vpc-typed-fixed.vhd', 2, 0);
      expect(qcowkit(['convert', '-f', 'vpc', '-O', 'raw', 'vpc-typed-fixed.vhd', 'typed.ours.raw'], dir).status).toBe(0);
      expect(qemu(['convert', '-f', 'vpc', '-O', 'raw', 'vpc-typed-fixed.vhd', 'typed.qemu.raw'], dir).status).toBe(0);
      expect(sha256(join(dir, 'typed.ours.raw'))).toBe(sha256(join(dir, 'typed.qemu.raw')));
      expect(qcowkit(['map', '-f', 'vpc', '--output=json', 'vpc-typed-fixed.vhd'], dir).stdout).toBe(qemu(['map', '-f', 'vpc', '--output=json', 'vpc-typed-fixed.vhd'], dir).stdout);
    });
    it('a footer only at the end must say "fixed": anything else is no VHD, for qemu as for qcowkit', () => {
      retyped('vpc-fixed.vhd', 'vpc-typed-dynamic.vhd', 3, -512);
      const ours = qcowkit(['info', '-f', 'vpc', 'vpc-typed-dynamic.vhd'], dir);
      const theirs = qemu(['info', '-f', 'vpc', 'vpc-typed-dynamic.vhd'], dir);
      expect(theirs.stderr).toMatch(/invalid VPC image/);
      expect(ours.status).toBe(1);
      expect(ours.stderr).toMatch(/invalid VPC image/);
    });
  });

  describe('vhdx log', () => {
    /** vhdx-dynamic.vhdx with a log entry that rewrites the BAT's first sector: block 0 ZERO (the log's checksum damaged when `broken`). */
    function dirty(name: string, broken: boolean): void {
      const image = new Uint8Array(readFileSync(join(dir, 'vhdx-dynamic.vhdx')));
      const batSector = image.slice(2 * 1024 * 1024, 2 * 1024 * 1024 + 4096);
      batSector.fill(0, 0, 8);
      batSector[0] = 2;
      const guid = randomGuid();
      const entry = logEntry({ logGuid: guid, sequence: 9, writes: [{ fileOffset: 2 * 1024 * 1024, sector: batSector }], flushedFileOffset: image.length, lastFileOffset: image.length });
      if (broken) entry[4] = entry[4]! ^ 1;
      writeFileSync(join(dir, name), withLog(image, guid, entry));
    }
    it('an image whose log needs replaying: qemu-img and qcowkit both refuse to read it; replayed by qemu-img, both read the same', () => {
      dirty('vhdx-dirty.vhdx', false);
      const theirs = qemu(['info', 'vhdx-dirty.vhdx'], dir);
      expect(theirs.status).toBe(1);
      expect(theirs.stderr).toMatch(/contains a log that needs to be replayed/);
      const ours = qcowkit(['info', 'vhdx-dirty.vhdx'], dir);
      expect(ours.status).toBe(1);
      expect(ours.stderr).toMatch(/vhdx-dirty\.vhdx.*contains a log that needs to be replayed/);
      expect(qcowkit(['convert', '-O', 'raw', 'vhdx-dirty.vhdx', 'x.raw'], dir).status).toBe(1);
      expect(qemu(['check', '-r', 'all', 'vhdx-dirty.vhdx'], dir).status).toBe(0);
      expect(qcowkit(['convert', '-O', 'raw', 'vhdx-dirty.vhdx', 'dirty.ours.raw'], dir).status).toBe(0);
      expect(qemu(['convert', '-O', 'raw', 'vhdx-dirty.vhdx', 'dirty.qemu.raw'], dir).status).toBe(0);
      expect(sha256(join(dir, 'dirty.ours.raw'))).toBe(sha256(join(dir, 'dirty.qemu.raw')));
      // The replayed entry made block 0 read as zeros: the log was applied, not ignored.
      expect(readFileSync(join(dir, 'dirty.ours.raw')).subarray(0, 1024 * 1024).every((b) => b === 0)).toBe(true);
      expect(qemu(['compare', '-f', 'vhdx', 'vhdx-dynamic.vhdx', 'mixed.raw'], dir).status).toBe(0);
    });
    it('check -r all replays the log as qemu-img does: same words, and the same disk afterwards', () => {
      dirty('vhdx-replay.ours.vhdx', false);
      writeFileSync(join(dir, 'vhdx-replay.qemu.vhdx'), readFileSync(join(dir, 'vhdx-replay.ours.vhdx')));
      for (const args of [[], ['--output=json']]) {
        if (args.length > 0) {
          dirty('vhdx-replay.ours.vhdx', false);
          writeFileSync(join(dir, 'vhdx-replay.qemu.vhdx'), readFileSync(join(dir, 'vhdx-replay.ours.vhdx')));
        }
        const ours = qcowkit(['check', '-r', 'all', ...args, 'vhdx-replay.ours.vhdx'], dir);
        const theirs = qemu(['check', '-r', 'all', ...args, 'vhdx-replay.qemu.vhdx'], dir);
        expect(ours.status).toBe(theirs.status);
        expect(ours.stdout.replace('vhdx-replay.ours.vhdx', 'X')).toBe(theirs.stdout.replace('vhdx-replay.qemu.vhdx', 'X'));
      }
      // Replayed: qemu-img opens ours read-only, checks it clean, and reads what it reads from its own.
      expect(qemu(['check', 'vhdx-replay.ours.vhdx'], dir).status).toBe(0);
      expect(qemu(['compare', '-f', 'vhdx', '-F', 'vhdx', 'vhdx-replay.ours.vhdx', 'vhdx-replay.qemu.vhdx'], dir).status).toBe(0);
      expect(qemu(['compare', '-f', 'vhdx', '-F', 'raw', 'vhdx-replay.ours.vhdx', 'mixed.raw'], dir).status).toBe(1);
    });
    it('check -r all beside a process writing the file: refused before the log is replayed, as qemu-img refuses', async () => {
      dirty('vhdx-held.vhdx', false);
      const before = sha256(join(dir, 'vhdx-held.vhdx'));
      // qemu-io opening the file as raw, read-write: it holds qemu's write lock and changes nothing.
      const holder = await QemuIoHolder.start(join(dir, 'vhdx-held.vhdx'), ['-f', 'raw']);
      try {
        const theirs = qemu(['check', '-r', 'all', 'vhdx-held.vhdx'], dir);
        expect(theirs.status).toBe(1);
        expect(theirs.stderr).toMatch(/Failed to get shared "write" lock/);
        const ours = qcowkit(['check', '-r', 'all', 'vhdx-held.vhdx'], dir);
        expect(ours.status).toBe(1);
        expect(ours.stderr).toMatch(/vhdx-held\.vhdx: Failed to get shared "write" lock/);
        expect(sha256(join(dir, 'vhdx-held.vhdx'))).toBe(before);
      } finally {
        await holder.release();
      }
    });
    it('a log entry with a wrong checksum is no log to replay, for qemu-img as for qcowkit', () => {
      dirty('vhdx-dirty-broken.vhdx', true);
      expect(qemu(['info', 'vhdx-dirty-broken.vhdx'], dir).status).toBe(0);
      expect(qcowkit(['info', 'vhdx-dirty-broken.vhdx'], dir).status).toBe(0);
      expect(qemu(['compare', '-f', 'vhdx', 'vhdx-dirty-broken.vhdx', 'mixed.raw'], dir).status).toBe(0);
      expect(qcowkit(['compare', '-f', 'vhdx', '-F', 'raw', 'vhdx-dirty-broken.vhdx', 'mixed.raw'], dir).status).toBe(0);
    });
  });

  describe('check', () => {
    it('vhdx: what qemu-img check says, clean and with a block past the end of the file', () => {
      const image = readFileSync(join(dir, 'vhdx-written.vhdx'));
      writeFileSync(join(dir, 'vhdx-cut.vhdx'), image.subarray(0, image.length - 4 * 1024 * 1024));
      for (const args of [['vhdx-dynamic.vhdx'], ['--output=json', 'vhdx-chunks.vhdx'], ['vhdx-cut.vhdx'], ['--output=json', 'vhdx-cut.vhdx']]) {
        const ours = qcowkit(['check', ...args], dir);
        const theirs = qemu(['check', ...args], dir);
        expect(ours.status, args.join(' ')).toBe(theirs.status);
        expect(ours.stdout).toBe(theirs.stdout);
        expect(ours.stderr.replaceAll('qcowkit: ', '')).toBe(theirs.stderr.replaceAll('qemu-img: ', ''));
      }
    });
    it('vmdk: qemu-img check\'s words for a clean image, and for a grain past the end of the file', () => {
      writeFileSync(join(dir, 'vmdk-cut.vmdk'), readFileSync(join(dir, 'vmdk-written.vmdk')).subarray(0, 200 * 1024));
      for (const args of [['vmdk-sparse.vmdk'], ['--output=json', 'vmdk-stream.vmdk'], ['vmdk-split.vmdk'], ['vmdk-cut.vmdk'], ['--output=json', 'vmdk-cut.vmdk'], ['-r', 'all', 'vmdk-sparse.vmdk']]) {
        const ours = qcowkit(['check', ...args], dir);
        const theirs = qemu(['check', ...args], dir);
        expect(ours.status, args.join(' ')).toBe(theirs.status);
        expect(ours.stdout).toBe(theirs.stdout);
        expect(ours.stderr.replaceAll('qcowkit: ', '')).toBe(theirs.stderr.replaceAll('qemu-img: ', ''));
      }
    });
    it('vpc: "This image format does not support checks", exit 63, like qemu-img', () => {
      const ours = qcowkit(['check', 'vpc-dynamic.vhd'], dir);
      const theirs = qemu(['check', 'vpc-dynamic.vhd'], dir);
      expect(ours.status).toBe(63);
      expect(theirs.status).toBe(63);
      expect(ours.stderr.replace(/^qcowkit: /, '')).toBe(theirs.stderr.replace(/^qemu-img: /, ''));
    });
  });
});
