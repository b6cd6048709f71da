import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hasQemuImg, requireQemuImg } from '../../../../fixtures/corpus.js';
import type { ImageFormat } from '../device/block-device.js';
import { RawDevice } from '../device/raw-device.js';
import { MemoryStorage } from '../io/memory-storage.js';
import type { Storage } from '../io/storage.js';
import { convertToSink } from '../ops/convert-to-sink.js';
import { fillPattern } from '../test-support/guest-model.js';
import { createImageSink, type NewImageOptions } from './create-image-sink.js';
import { replayVhdxLog } from './vhdx/log-replay.js';
import { randomGuid } from './vhdx/guid.js';
import { logEntry, withLog } from '../test-support/vhdx-log-entry.js';

requireQemuImg();

/**
 * What a convert killed halfway leaves behind. A killed process's writes reach the file in the order they were
 * made, up to the kill: so every prefix of the writer's operations is a file a SIGKILL can leave. For each
 * prefix qemu-img must either refuse the file as not being of the format at all (and probe it as raw: nothing
 * claims to be the image), or open it as a complete image (equal to the source, and clean where qemu-img can
 * check). A prefix that qemu-img opens as an image of the format with part of the data missing, or calls
 * corrupt, fails the test.
 */
type Op = { kind: 'write'; offset: number; bytes: Uint8Array } | { kind: 'truncate'; size: number };

/** Storage that records every operation in order, on top of memory. */
class RecordingStorage extends MemoryStorage {
  readonly ops: Op[] = [];
  override async write(buffer: Uint8Array, offset: number): Promise<void> {
    this.ops.push({ kind: 'write', offset, bytes: buffer.slice() });
    await super.write(buffer, offset);
  }
  override async truncate(size: number): Promise<void> {
    this.ops.push({ kind: 'truncate', size });
    await super.truncate(size);
  }
}

async function replay(ops: Op[], initial: Uint8Array = new Uint8Array(0)): Promise<Uint8Array> {
  const storage: Storage = new MemoryStorage(initial.slice());
  for (const op of ops) {
    if (op.kind === 'write') await storage.write(op.bytes, op.offset);
    else await storage.truncate(op.size);
  }
  return (storage as MemoryStorage).contents().slice();
}

interface Variant {
  name: string;
  format: Exclude<ImageFormat, 'raw' | 'qcow2'>;
  options: Record<string, unknown>;
  /** What qemu-img says about a file that is not of the format. */
  notThisFormat: RegExp;
  qemuChecks: boolean;
  /** When the refusal message does not say why: the format's magic at offset 0, which a refused prefix must lack. */
  magicAt0?: string;
}

const variants: Variant[] = [
  { name: 'vpc dynamic', format: 'vpc', options: {}, notThisFormat: /invalid VPC image|File too small for a VHD header/, qemuChecks: false },
  { name: 'vpc fixed', format: 'vpc', options: { subformat: 'fixed' }, notThisFormat: /invalid VPC image|File too small for a VHD header/, qemuChecks: false },
  { name: 'vmdk monolithicSparse', format: 'vmdk', options: {}, notThisFormat: /invalid VMDK image descriptor|File is too small, not a valid image/, qemuChecks: true },
  { name: 'vmdk streamOptimized', format: 'vmdk', options: { subformat: 'streamOptimized' }, notThisFormat: /invalid VMDK image descriptor|File is too small, not a valid image/, qemuChecks: true },
  // qemu says only "Invalid argument" for a file without the "vhdxfile" signature; the test checks the signature too.
  { name: 'vhdx dynamic', format: 'vhdx', options: { blockSize: 1024 * 1024 }, notThisFormat: /Invalid argument/, qemuChecks: true, magicAt0: 'vhdxfile' },
  { name: 'vhdx fixed', format: 'vhdx', options: { subformat: 'fixed', blockSize: 1024 * 1024 }, notThisFormat: /Invalid argument/, qemuChecks: true, magicAt0: 'vhdxfile' },
];

const SIZE = 20 * 1024 * 1024 + 3 * 512;

function sourceDisk(): Uint8Array {
  const disk = new Uint8Array(SIZE);
  for (const [at, length] of [[0, 300_000], [2 * 1024 * 1024 - 4096, 8192], [9 * 1024 * 1024, 1024 * 1024], [17 * 1024 * 1024 + 512, 4096], [SIZE - 1024, 1024]] as const) {
    disk.set(fillPattern(length, at + 1), at);
  }
  return disk;
}

/** The prefixes tried: all when there are few operations, else a spread plus the last ones (where the metadata goes). */
function prefixLengths(total: number): number[] {
  if (total <= 60) return Array.from({ length: total + 1 }, (_, i) => i);
  const picks = new Set<number>();
  for (let i = 0; i <= 40; i++) picks.add(Math.round((total * i) / 40));
  for (let i = Math.max(0, total - 10); i <= total; i++) picks.add(i);
  return [...picks].sort((a, b) => a - b);
}

describe.runIf(hasQemuImg())('a convert killed after any of its writes leaves nothing that claims to be the image', { timeout: 600_000 }, () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'qcowkit-formats-crash-'));
    writeFileSync(join(dir, 'source.raw'), sourceDisk());
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  for (const variant of variants) {
    it(variant.name, async () => {
      const storage = new RecordingStorage(new Uint8Array(0), { name: 'out' });
      const source = await RawDevice.open(new MemoryStorage(sourceDisk()));
      await convertToSink(source, await createImageSink(storage, { ...variant.options, format: variant.format, size: SIZE } as NewImageOptions));
      let complete = 0;
      let refused = 0;
      for (const n of prefixLengths(storage.ops.length)) {
        const file = join(dir, `${variant.format}-prefix`);
        writeFileSync(file, await replay(storage.ops.slice(0, n)));
        const info = spawnSync('qemu-img', ['info', '-f', variant.format, '--output=json', file], { encoding: 'utf8' });
        const where = `after ${n} of ${storage.ops.length} operations`;
        if (info.status !== 0) {
          expect(info.stderr, `${where}: ${info.stderr}`).toMatch(variant.notThisFormat);
          if (variant.magicAt0 !== undefined) expect(readFileSync(file).subarray(0, variant.magicAt0.length).toString('latin1'), where).not.toBe(variant.magicAt0);
          const probed = spawnSync('qemu-img', ['info', '--output=json', file], { encoding: 'utf8' });
          expect(probed.status, where).toBe(0);
          expect(JSON.parse(probed.stdout).format, where).toBe('raw');
          refused++;
          continue;
        }
        const compare = spawnSync('qemu-img', ['compare', '-f', variant.format, '-F', 'raw', file, join(dir, 'source.raw')], { encoding: 'utf8' });
        expect(`${compare.stdout}${compare.stderr}`, where).toMatch(/Images are identical/);
        if (variant.qemuChecks) expect(spawnSync('qemu-img', ['check', '-f', variant.format, file]).status, where).toBe(0);
        complete++;
      }
      // Both outcomes occur: the test looked at unfinished files and at finished ones.
      expect(refused).toBeGreaterThan(0);
      expect(complete).toBeGreaterThan(0);
    });
  }
});

describe.runIf(hasQemuImg())('a VHDX log replay (check -r all) killed after any of its writes', { timeout: 600_000 }, () => {
  it('leaves an image whose log still replays, or the replayed one', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'qcowkit-formats-replay-'));
    try {
      // A 20 MiB VHDX with 1 MiB blocks (BAT at 2 MiB), and a log entry that marks its first block ZERO and zeroes
      // 8 KiB of its second block.
      const out = new MemoryStorage(new Uint8Array(0), { name: 'out' });
      await convertToSink(await RawDevice.open(new MemoryStorage(sourceDisk())), await createImageSink(out, { format: 'vhdx', size: SIZE, blockSize: 1024 * 1024 }));
      const image = out.contents().slice();
      const view = new DataView(image.buffer);
      const second = (view.getUint32(2 * 1024 * 1024 + 8, true) >>> 20) * 1024 * 1024;
      const batSector = image.slice(2 * 1024 * 1024, 2 * 1024 * 1024 + 4096);
      batSector.fill(0, 0, 8);
      batSector[0] = 2;
      const guid = randomGuid();
      const entry = logEntry({ logGuid: guid, sequence: 3, writes: [{ fileOffset: 2 * 1024 * 1024, sector: batSector }], zeros: [{ fileOffset: second, length: 8192 }], flushedFileOffset: image.length, lastFileOffset: image.length });
      const dirty = withLog(image, guid, entry);
      const storage = new RecordingStorage(dirty.slice(), { name: 'dirty' });
      expect(await replayVhdxLog(storage)).toBe(true);
      writeFileSync(join(dir, 'replayed.vhdx'), storage.contents());
      expect(spawnSync('qemu-img', ['check', join(dir, 'replayed.vhdx')]).status).toBe(0);
      let replayedAgain = 0;
      for (let n = 0; n <= storage.ops.length; n++) {
        const file = join(dir, 'prefix.vhdx');
        writeFileSync(file, await replay(storage.ops.slice(0, n), dirty));
        const where = `after ${n} of ${storage.ops.length} operations`;
        const info = spawnSync('qemu-img', ['info', file], { encoding: 'utf8' });
        if (info.status !== 0) {
          expect(info.stderr, where).toMatch(/contains a log that needs to be replayed/);
          expect(spawnSync('qemu-img', ['check', '-r', 'all', file]).status, where).toBe(0);
          replayedAgain++;
        }
        expect(spawnSync('qemu-img', ['check', file]).status, where).toBe(0);
        const compare = spawnSync('qemu-img', ['compare', '-f', 'vhdx', '-F', 'vhdx', file, join(dir, 'replayed.vhdx')], { encoding: 'utf8' });
        expect(`${compare.stdout}${compare.stderr}`, where).toMatch(/Images are identical/);
      }
      expect(replayedAgain).toBeGreaterThan(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
