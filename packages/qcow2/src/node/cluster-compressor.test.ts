import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { inflateRawSync } from 'node:zlib';
import { loadZstd } from '../engine/portable-codecs.js';
import { clusterCompressor } from './cluster-compressor.js';
import { zstdClusterCompressor } from './zstd-wasm-compressor.js';
import { ZSTD_LEVEL, ZstdWorkers } from './zstd-workers.js';

const CLUSTER = 65536;
/** Log-like text (compresses well), random bytes (does not), and a cluster that is nearly all zeros. */
const text = Buffer.from(Array.from({ length: 3000 }, (_, i) => `2026-11-26 12:${String(i % 60).padStart(2, '0')} host kernel: event ${(i * 7919) % 100000} ok\n`).join('')).subarray(0, CLUSTER);
const clusters = [new Uint8Array(text), new Uint8Array(randomBytes(CLUSTER)), Object.assign(new Uint8Array(CLUSTER), { 5: 1 })];

// The worker script is compiled JavaScript: tests run from the build (npm test builds first).
const WORKER = new URL('../../dist/node/zstd-worker.js', import.meta.url);
const pools: ZstdWorkers[] = [];
afterAll(async () => Promise.all(pools.map((pool) => pool.close())));

describe('zstd compression of clusters', () => {
  it("gives the frames the package's one-shot compress gives, on worker threads whatever their number", async () => {
    expect(existsSync(fileURLToPath(WORKER)), 'dist/node/zstd-worker.js missing: run npm run build').toBe(true);
    const zstd = await loadZstd();
    const expected = clusters.map((c) => {
      const frame = zstd.compress(c, ZSTD_LEVEL);
      return frame.length < CLUSTER ? Buffer.from(frame).toString('hex') : undefined;
    });
    expect(expected[0]).toBeDefined(); // text shrinks
    expect(expected[1]).toBeUndefined(); // random data does not: stored as is
    const mainThread = await zstdClusterCompressor(CLUSTER, ZSTD_LEVEL);
    expect(clusters.map((c) => mainThread(c, CLUSTER)).map((f) => f && Buffer.from(f).toString('hex'))).toEqual(expected);
    for (const threads of [1, 3]) {
      const pool = new ZstdWorkers(threads, WORKER);
      pools.push(pool);
      // Several batches at once, so with 3 threads they go to different workers.
      const batches = await Promise.all([clusters, clusters.slice().reverse(), clusters].map((batch) => pool.compress(batch, CLUSTER)));
      expect(batches[0]!.map((f) => f && Buffer.from(f).toString('hex'))).toEqual(expected);
      expect(batches[1]!.map((f) => f && Buffer.from(f).toString('hex'))).toEqual(expected.slice().reverse());
      expect(batches[2]!.map((f) => f && Buffer.from(f).toString('hex'))).toEqual(expected);
    }
    // And they decompress to the cluster.
    expect(Buffer.from(zstd.decompress(Buffer.from(expected[0]!, 'hex'), { defaultHeapSize: CLUSTER }))).toEqual(Buffer.from(clusters[0]!));
  });

  it("deflates with qemu's 4 KiB window, the same streams whatever the number of threads", async () => {
    const one = clusterCompressor('zlib', CLUSTER, { threads: 1 });
    const many = clusterCompressor('zlib', CLUSTER, { threads: 4 });
    const a = await Promise.all(clusters.map((c) => one(c)));
    const b = await Promise.all(clusters.map((c) => many(c)));
    expect(a.map((s) => s && Buffer.from(s).toString('hex'))).toEqual(b.map((s) => s && Buffer.from(s).toString('hex')));
    expect(a[1]).toBeUndefined();
    expect(Buffer.from(inflateRawSync(a[0]!, { windowBits: 12 }))).toEqual(Buffer.from(clusters[0]!));
  });
});
