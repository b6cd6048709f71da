import fc from 'fast-check';
import { fillPattern } from './guest-model.js';

/**
 * Random sparse guest disks for the front-to-back format writers: a size and runs of data (PRNG bytes, a
 * repeated byte, or zeros written over earlier data), so a disk has holes, whole blocks of data, blocks touched
 * only at one end, and data in its last sector.
 */
export interface SparseDisk {
  size: number;
  runs: Array<{ offset: number; length: number; fill: 'random' | 'byte' | 'zero'; seed: number }>;
}

export function sparseDiskArb(maxSize: number): fc.Arbitrary<SparseDisk> {
  return fc
    .record({
      sectors: fc.integer({ min: 1, max: maxSize / 512 }),
      runs: fc.array(
        fc.record({
          at: fc.double({ min: 0, max: 0.9999, noNaN: true }),
          length: fc.oneof(fc.integer({ min: 1, max: 4096 }), fc.integer({ min: 1, max: 3 * 1024 * 1024 })),
          fill: fc.constantFrom('random' as const, 'byte' as const, 'zero' as const),
          seed: fc.integer({ min: 1, max: 255 }),
        }),
        { maxLength: 12 },
      ),
      lastSector: fc.boolean(),
    })
    .map(({ sectors, runs, lastSector }) => {
      const size = sectors * 512;
      const placed = runs.map((r) => {
        const offset = Math.floor(r.at * size);
        return { offset, length: Math.max(1, Math.min(r.length, size - offset)), fill: r.fill, seed: r.seed };
      });
      if (lastSector) placed.push({ offset: size - 512, length: 512, fill: 'byte', seed: 0x5a });
      return { size, runs: placed };
    });
}

/** The disk's bytes. */
export function sparseDiskBytes(disk: SparseDisk): Uint8Array {
  const bytes = new Uint8Array(disk.size);
  for (const run of disk.runs) {
    const target = bytes.subarray(run.offset, run.offset + run.length);
    if (run.fill === 'random') target.set(fillPattern(run.length, run.seed));
    else target.fill(run.fill === 'byte' ? run.seed : 0);
  }
  return bytes;
}
