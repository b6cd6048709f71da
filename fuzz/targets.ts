/**
 * Fuzz targets: each takes one input (the bytes of a would-be qcow2 file) and drives one part of the engine on
 * in-memory storage. A Qcow2Error is the expected answer to a bad input; anything else thrown — TypeError,
 * RangeError, an allocation far beyond what the input could justify, a promise that never settles — is a
 * finding. The engine module is passed in, so the same targets run on the instrumented build (fuzz/run.ts) and
 * on the plain one (fuzz/regressions.test.ts).
 */
import type * as Engine from '../packages/qcow2/src/entries/engine.js';

export type EngineModule = typeof Engine;
export type FuzzTarget = (data: Uint8Array) => Promise<void>;

/** Guest bytes a read target reads at most, so one input costs milliseconds whatever its virtual size. */
const READ_BUDGET = 256 * 1024;

export function fuzzTargets(engine: EngineModule): Record<string, FuzzTarget> {
  const { MemoryStorage, Qcow2Image, Qcow2Device, checkStorage, mapImage, portableCodecs } = engine;
  const storageOf = (data: Uint8Array): InstanceType<typeof MemoryStorage> => new MemoryStorage(data.slice(), { name: 'fuzz.qcow2', readOnly: true });

  async function openDevice(data: Uint8Array): Promise<InstanceType<typeof Qcow2Device>> {
    const image = await Qcow2Image.open(storageOf(data), { codecs: portableCodecs, l2CacheBytes: 1024 * 1024 });
    return new Qcow2Device('fuzz.qcow2', image, undefined);
  }

  /** Reads the start, the end and one middle range of `device`, within the budget. */
  async function readSome(device: { size: number; read(dest: Uint8Array, offset: number): Promise<void> }, salt: number): Promise<void> {
    const size = device.size;
    const ranges: Array<[number, number]> = [[0, Math.min(size, READ_BUDGET / 2)]];
    if (size > READ_BUDGET / 2) {
      const middle = Math.floor(((salt % 997) / 997) * (size - 65536));
      ranges.push([middle - (middle % 512), Math.min(65536, size - middle)]);
      ranges.push([Math.max(0, size - 65536), Math.min(65536, size)]);
    }
    for (const [offset, length] of ranges) if (length > 0) await device.read(new Uint8Array(length), offset);
  }

  return {
    /** Header, extensions, layout validation, snapshot table: Qcow2Image.open. */
    async open(data) {
      const image = await Qcow2Image.open(storageOf(data), { codecs: portableCodecs });
      void image.snapshots.length;
      await image.close();
    },
    /** Guest reads through L1/L2, standard, zero and compressed clusters (zlib and zstd). */
    async read(data) {
      const device = await openDevice(data);
      await readSome(device, data.length);
      await device.close();
    },
    /** Extents ("block status") and qemu-img map's entries over the whole disk. */
    async map(data) {
      const device = await openDevice(data);
      let entries = 0;
      for await (const _entry of mapImage(device)) if (++entries > 1_000_000) throw new Error('map: more than a million entries');
      await device.close();
    },
    /** qemu-img check: refcounts, tables, snapshots, bitmaps; its messages and report. */
    async check(data) {
      await checkStorage(storageOf(data), { onMessage: () => {} });
    },
    /** Snapshot table parsing, and each snapshot's L1 table read through a snapshot view. */
    async snapshots(data) {
      const device = await openDevice(data);
      for (const snapshot of device.image.snapshots.slice(0, 8)) {
        const view = await device.snapshotView(snapshot);
        await readSome(view, snapshot.l1Size);
      }
      await device.close();
    },
  };
}

/** Whether `error` is the engine's expected answer to a bad input. */
export function isExpected(engine: EngineModule, error: unknown): boolean {
  return error instanceof engine.Qcow2Error;
}
