/**
 * Zero detection for convert and compare. Where the host has Node's Buffer (a global, not an import, so the
 * engine still bundles for browsers), memcmp against a zero buffer does it natively, about ten times faster
 * than a JS loop; elsewhere the loop reads 4 bytes at a time when the view is 4-byte aligned.
 */
interface NativeCompare {
  compare(a: Uint8Array, b: Uint8Array): number;
}
const nativeBuffer = (globalThis as { Buffer?: NativeCompare }).Buffer;
let zeros = new Uint8Array(0);

/** Whether every byte of `bytes` is zero (a native memcmp where Node's Buffer exists). */
export function isZero(bytes: Uint8Array): boolean {
  if (nativeBuffer !== undefined && bytes.length >= 64) {
    // Data almost always has a non-zero byte among its first few: decided here, without the native call (a
    // convert asks this of every 4 KiB block it copies).
    for (let i = 0; i < PROBE; i++) if (bytes[i] !== 0) return false;
    if (zeros.length < bytes.length) zeros = new Uint8Array(Math.max(bytes.length, 65536));
    if (zeroView.length !== bytes.length) zeroView = zeros.subarray(0, bytes.length);
    return nativeBuffer.compare(bytes, zeroView) === 0;
  }
  return isZeroLoop(bytes);
}

/** Leading bytes isZero reads itself before comparing the rest natively. */
const PROBE = 16;
/** The zero bytes compared against, kept for the length last asked (blocks of one size in a row). */
let zeroView = zeros;

/** The portable loop (exported for tests). */
export function isZeroLoop(bytes: Uint8Array): boolean {
  const aligned = bytes.byteOffset % 4 === 0 ? bytes.length >>> 2 : 0;
  if (aligned > 0) {
    const words = new Uint32Array(bytes.buffer, bytes.byteOffset, aligned);
    for (let i = 0; i < words.length; i++) if (words[i] !== 0) return false;
  }
  for (let i = aligned << 2; i < bytes.length; i++) if (bytes[i] !== 0) return false;
  return true;
}

/** Index of the first non-zero byte, or -1. */
export function firstNonZero(bytes: Uint8Array): number {
  for (let i = 0; i < bytes.length; i++) if (bytes[i] !== 0) return i;
  return -1;
}

/** Index of the first byte where a and b differ (same length), or -1. */
export function firstDifference(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  if (a.byteOffset % 4 === 0 && b.byteOffset % 4 === 0) {
    const words = n >>> 2;
    const wa = new Uint32Array(a.buffer, a.byteOffset, words);
    const wb = new Uint32Array(b.buffer, b.byteOffset, words);
    for (let i = 0; i < words; i++) {
      if (wa[i] !== wb[i]) {
        for (let j = i << 2; ; j++) if (a[j] !== b[j]) return j;
      }
    }
    for (let i = words << 2; i < n; i++) if (a[i] !== b[i]) return i;
    return a.length === b.length ? -1 : n;
  }
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
}
