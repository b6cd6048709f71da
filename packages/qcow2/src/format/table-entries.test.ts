import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  compressedSpan,
  decodeCompressedDescriptor,
  decodeL1Entry,
  decodeL2Entry,
  encodeCompressedDescriptor,
  encodeL1Entry,
  encodeL2Entry,
  type L2Entry,
} from './table-entries.js';

/** Host offsets as the format allows them: bits 9..55, cluster aligned, within 2^53 for JS. */
const clusterBitsArb = fc.integer({ min: 9, max: 21 });
const hostClusterArb = (clusterBits: number) =>
  fc.integer({ min: 1, max: Math.floor((2 ** 53 - 1) / 2 ** clusterBits) }).map((n) => n * 2 ** clusterBits);

function toBigInt({ hi, lo }: { hi: number; lo: number }): bigint {
  return (BigInt(hi >>> 0) << 32n) | BigInt(lo >>> 0);
}

describe('L1 entries', () => {
  it('round-trip offset and COPIED', () => {
    fc.assert(
      fc.property(hostClusterArb(9), fc.boolean(), (l2Offset, copied) => {
        const { hi, lo } = encodeL1Entry({ l2Offset, copied });
        expect(decodeL1Entry(hi, lo)).toEqual({ l2Offset, copied });
        // The same value through BigInt arithmetic, bit by bit as the spec lays it out.
        expect(toBigInt({ hi, lo })).toBe(BigInt(l2Offset) | (copied ? 1n << 63n : 0n));
      }),
    );
  });
});

describe('standard L2 entries', () => {
  it('round-trip normal and zero clusters', () => {
    fc.assert(
      fc.property(clusterBitsArb, fc.boolean(), fc.boolean(), fc.nat(), (clusterBits, copied, zero, seed) => {
        const hostOffset = (seed % 2 ** 20) * 2 ** clusterBits;
        const entry: L2Entry =
          hostOffset === 0 && !zero
            ? { kind: 'unallocated' }
            : zero
              ? { kind: 'zero', hostOffset, copied }
              : { kind: 'normal', hostOffset, copied };
        const encoded = encodeL2Entry(entry, clusterBits);
        expect(decodeL2Entry(encoded.hi, encoded.lo, clusterBits, false)).toEqual(entry);
        const expectedBits =
          entry.kind === 'unallocated' ? 0n : BigInt(hostOffset) | (copied ? 1n << 63n : 0n) | (zero ? 1n : 0n);
        expect(toBigInt(encoded)).toBe(expectedBits);
      }),
    );
  });

  it('extended L2 ignores the zero flag bit (subcluster bitmaps say it)', () => {
    expect(decodeL2Entry(0x80000000, 0x10000 | 1, 16, true)).toEqual({ kind: 'normal', hostOffset: 0x10000, copied: true });
  });
});

describe('compressed cluster descriptors', () => {
  it('round-trip offset and sector count for every cluster size', () => {
    fc.assert(
      fc.property(clusterBitsArb, fc.nat(), fc.nat(), (clusterBits, offsetSeed, sectorSeed) => {
        const x = 62 - (clusterBits - 8);
        const maxOffset = Math.min(2 ** x, 2 ** 53) - 1;
        const hostOffset = offsetSeed % (maxOffset + 1);
        const additionalSectors = sectorSeed % 2 ** (clusterBits - 8);
        const encoded = encodeCompressedDescriptor(hostOffset, additionalSectors, clusterBits);
        expect(decodeCompressedDescriptor(encoded.hi, encoded.lo, clusterBits)).toEqual({ hostOffset, additionalSectors });
        expect(decodeL2Entry(encoded.hi, encoded.lo, clusterBits, false)).toEqual({ kind: 'compressed', hostOffset, additionalSectors });
        // Spec layout: bit 62 set, sectors at bits x..61, offset at bits 0..x-1.
        expect(toBigInt(encoded)).toBe((1n << 62n) | (BigInt(additionalSectors) << BigInt(x)) | BigInt(hostOffset));
      }),
    );
  });

  it('spans to the end of the last sector', () => {
    expect(compressedSpan(1000, 0)).toBe(24);
    expect(compressedSpan(1024, 3)).toBe(2048);
  });
});
