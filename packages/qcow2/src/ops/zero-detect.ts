/**
 * Zero detection for convert and compare. Checks 8 bytes at a time through a Float64Array-free integer view;
 * callers pass buffers whose byteOffset is 4-byte aligned (the engine's own buffers are).
 */
export function isZero(bytes: Uint8Array): boolean {
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
