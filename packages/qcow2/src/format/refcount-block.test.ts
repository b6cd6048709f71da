import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { getRefcount, maxRefcount, refcountEntriesPerBlock, setRefcount } from './refcount-block.js';

describe('refcount block entries', () => {
  it('set/get round-trips at every width without disturbing neighbours', () => {
    fc.assert(
      fc.property(fc.constantFrom(1, 2, 4, 8, 16, 32, 64), fc.array(fc.tuple(fc.nat(), fc.nat()), { maxLength: 50 }), (bits, writes) => {
        const entries = refcountEntriesPerBlock(512, bits);
        const block = new DataView(new ArrayBuffer(512));
        const model = new Map<number, number>();
        for (const [i, v] of writes) {
          const index = i % entries;
          const value = v % (Math.min(maxRefcount(bits), 2 ** 31) + 1);
          setRefcount(block, index, bits, value);
          model.set(index, value);
        }
        for (let i = 0; i < entries; i++) expect(getRefcount(block, i, bits)).toBe(model.get(i) ?? 0);
      }),
    );
  });

  it('packs narrow widths least significant bits first (spec example)', () => {
    const block = new DataView(new ArrayBuffer(1));
    setRefcount(block, 0, 1, 1);
    setRefcount(block, 3, 1, 1);
    expect(block.getUint8(0)).toBe(0b1001);
    setRefcount(block, 1, 4, 0xa);
    expect(block.getUint8(0)).toBe(0xa9);
  });
});
