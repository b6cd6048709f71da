import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { HeaderExtensionType } from './constants.js';
import { backingFormatOf, encodeStringExtension, featureNamesOf } from './header-extensions.js';
import { decodeHeader, encodeHeader } from './header.js';
import { baseHeader } from '../test-support/minimal-image.js';

function inCluster(bytes: Uint8Array, clusterBits: number): Uint8Array {
  const cluster = new Uint8Array(2 ** clusterBits);
  cluster.set(bytes);
  return cluster;
}

describe('header codec', () => {
  it('round-trips every field, extensions and the backing name', () => {
    fc.assert(
      fc.property(
        fc.record({
          clusterBits: fc.integer({ min: 9, max: 21 }),
          size: fc.integer({ min: 0, max: 2 ** 53 - 1 }),
          l1Size: fc.integer({ min: 0, max: 2 ** 22 }),
          refcountOrder: fc.integer({ min: 0, max: 6 }),
          incompatibleFeatures: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
          autoclearFeatures: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
          compressionType: fc.integer({ min: 0, max: 1 }),
          backing: fc.option(fc.string({ minLength: 1, maxLength: 40 }), { nil: undefined }),
          unknownTail: fc.uint8Array({ minLength: 0, maxLength: 3 }).map((a) => new Uint8Array(a.length * 8).fill(7)),
        }),
        (r) => {
          const header = baseHeader({
            clusterBits: r.clusterBits,
            size: r.size,
            l1Size: r.l1Size,
            refcountOrder: r.refcountOrder,
            incompatibleFeatures: r.incompatibleFeatures,
            autoclearFeatures: r.autoclearFeatures,
            compressionType: r.compressionType,
            backingFile: r.backing,
            headerLength: 112 + r.unknownTail.length,
            unknownHeaderBytes: r.unknownTail,
            extensions: [encodeStringExtension(HeaderExtensionType.BackingFormat, 'qcow2'), { type: 0x12345678, data: new Uint8Array([1, 2, 3]) }],
          });
          const encoded = encodeHeader(header);
          const decoded = decodeHeader(inCluster(encoded, r.clusterBits));
          expect(decoded).toEqual(header);
          expect(backingFormatOf(decoded.extensions)).toBe('qcow2');
        },
      ),
    );
  });

  it('decodes v2 headers with the fixed refcount order and no feature words', () => {
    const encoded = encodeHeader(baseHeader({ version: 2, headerLength: 72, backingFile: 'base.img' }));
    const decoded = decodeHeader(inCluster(encoded, 16));
    expect(decoded.version).toBe(2);
    expect(decoded.refcountOrder).toBe(4);
    expect(decoded.headerLength).toBe(72);
    expect(decoded.backingFile).toBe('base.img');
  });

  it('reads the feature name table', () => {
    const data = new Uint8Array(48 * 2);
    data.set([0, 0], 0);
    data.set(new TextEncoder().encode('dirty bit'), 2);
    data.set([0, 40], 48);
    data.set(new TextEncoder().encode('future feature'), 50);
    expect(featureNamesOf([{ type: HeaderExtensionType.FeatureNameTable, data }])).toEqual([
      { type: 0, bit: 0, name: 'dirty bit' },
      { type: 0, bit: 40, name: 'future feature' },
    ]);
  });
});
