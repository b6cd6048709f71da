/** The images the benchmarks share (built once, cached; see images.ts). */
import { GiB, KiB, MiB, mixedImage, sparseImage } from './images.js';

const mixedBase = { virtualSize: 2 * GiB, clusterSize: 64 * KiB, seed: 1, minSegment: 64 * KiB, maxSegment: 4 * MiB };

/** 2 GiB: ~50% incompressible data, ~20% written zeros (zero flag, zero flag over allocated, literal zeros), ~30% holes. */
export const mixed2g = mixedImage('mixed-2g', {
  ...mixedBase,
  shares: { random: 0.5, 'zero-flag': 0.05, 'zero-alloc': 0.05, 'literal-zero': 0.1, hole: 0.3 },
});

/** The same layout (same seed), a fifth of the data segments written as compressed clusters of text-like data. */
export const mixed2gCompressed = mixedImage('mixed-2g-compressed', {
  ...mixedBase,
  shares: { random: 0.4, compressed: 0.1, 'zero-flag': 0.05, 'zero-alloc': 0.05, 'literal-zero': 0.1, hole: 0.3 },
});

/** 100 GiB virtual with three small written regions: metadata-only work (200 L1 entries, 3 L2 tables). */
export const sparse100g = sparseImage('sparse-100g', {
  virtualSize: 100 * GiB,
  clusterSize: 64 * KiB,
  regions: [
    { offset: 0, length: 1 * MiB, pattern: 0xa1 },
    { offset: 40 * GiB + 3 * MiB, length: 256 * KiB, pattern: 0xb2 },
    { offset: 100 * GiB - 2 * MiB, length: 2 * MiB, pattern: 0xc3 },
  ],
});
