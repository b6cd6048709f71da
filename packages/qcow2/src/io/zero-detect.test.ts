import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { isZero, isZeroLoop } from './zero-detect.js';

describe('isZero', () => {
  it('finds a single non-zero byte wherever it is: in the probed head, just past it, at the end, in views at any offset', () => {
    for (const length of [1, 15, 16, 17, 63, 64, 65, 4096, 65536]) {
      const buffer = new Uint8Array(length + 8);
      for (const start of [0, 1, 3, 8]) {
        const view = buffer.subarray(start, start + length);
        expect(isZero(view)).toBe(true);
        for (const at of new Set([0, 15, 16, 17, 63, length >> 1, length - 1].filter((i) => i >= 0 && i < length))) {
          view[at] = 0x80;
          expect(isZero(view), `length ${length}, offset ${start}, byte ${at}`).toBe(false);
          view[at] = 0;
        }
        // Bytes just outside the view do not count.
        buffer.fill(1);
        buffer.fill(0, start, start + length);
        expect(isZero(view)).toBe(true);
        buffer.fill(0);
      }
    }
  });

  it('agrees with the portable loop', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 5000 }), fc.array(fc.tuple(fc.nat(), fc.integer({ min: 1, max: 255 })), { maxLength: 3 }), (length, marks) => {
        const bytes = new Uint8Array(length);
        for (const [at, value] of marks) if (length > 0) bytes[at % length] = value;
        expect(isZero(bytes)).toBe(isZeroLoop(bytes));
      }),
    );
  });
});
