/**
 * Deterministic data for benchmark images: never /dev/urandom, so the same parameters always give the same
 * image (and the same numbers can be reproduced on another machine).
 *
 * - `Prng`: a seeded 32-bit generator (mulberry32) for layout decisions.
 * - `randomBytesAt`: incompressible bytes, the AES-256-CTR keystream of a key derived from a seed (the same
 *   as `openssl enc -aes-256-ctr` of /dev/zero with a fixed key). The counter is the byte offset / 16, so the
 *   bytes at an offset do not depend on what else was generated.
 * - `pseudoText`: compressible, text-like bytes (zlib gets roughly 3:1 on them) for compressed clusters.
 */
import { createCipheriv, createHash } from 'node:crypto';

export class Prng {
  private state: number;

  constructor(seed: number) {
    this.state = seed >>> 0;
  }

  /** Uniform in [0, 1). */
  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** Uniform integer in [lo, hi]. */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }

  /** Picks a key of `weights` with probability proportional to its weight. */
  pick<K extends string>(weights: Readonly<Record<K, number>>): K {
    const entries = Object.entries(weights) as [K, number][];
    const total = entries.reduce((sum, [, w]) => sum + w, 0);
    let x = this.next() * total;
    for (const [key, weight] of entries) {
      x -= weight;
      if (x < 0) return key;
    }
    return entries[entries.length - 1]![0];
  }
}

/** Fills `buffer` with the keystream bytes at [offset, offset+buffer.length) for `seed`. offset must be 16-aligned. */
export function randomBytesAt(seed: string, offset: number, buffer: Uint8Array): void {
  if (offset % 16 !== 0) throw new Error('randomBytesAt: offset must be a multiple of 16');
  const key = createHash('sha256').update(`qcowkit-bench:${seed}`).digest();
  const iv = Buffer.alloc(16);
  const block = BigInt(offset / 16);
  iv.writeBigUInt64BE(block >> 64n, 0);
  iv.writeBigUInt64BE(block & 0xffff_ffff_ffff_ffffn, 8);
  const cipher = createCipheriv('aes-256-ctr', key, iv);
  const zeros = new Uint8Array(Math.min(buffer.length, 1 << 20));
  let done = 0;
  while (done < buffer.length) {
    const n = Math.min(zeros.length, buffer.length - done);
    const out = cipher.update(zeros.subarray(0, n));
    buffer.set(out, done);
    done += out.length;
  }
}

const WORDS = (
  'the of and to in is for on that with as by this from disk image cluster table offset refcount snapshot ' +
  'backing file header guest host sector block write read zero data qemu qcow2 convert map extent compressed ' +
  'error state entry index length bytes kernel module service config user system log warning info debug'
).split(' ');

/** `length` bytes of seeded pseudo log text: lines of words and numbers, compressible like real text. */
export function pseudoText(seed: number, length: number): Uint8Array {
  const rng = new Prng(seed);
  const out = new Uint8Array(length);
  let pos = 0;
  let line = 0;
  while (pos < length) {
    const parts = [`${String(line++).padStart(8, '0')}`, `${rng.int(0, 23)}:${rng.int(10, 59)}:${rng.int(10, 59)}`];
    const words = rng.int(4, 14);
    for (let i = 0; i < words; i++) parts.push(rng.next() < 0.15 ? `0x${rng.int(0, 0xffffff).toString(16)}` : WORDS[rng.int(0, WORDS.length - 1)]!);
    const bytes = Buffer.from(`${parts.join(' ')}\n`, 'latin1');
    out.set(bytes.subarray(0, Math.min(bytes.length, length - pos)), pos);
    pos += bytes.length;
  }
  return out;
}
