import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { qcow2Rejection } from '../test-support/qcow2-rejection.js';
import { startRangeServer, type RangeServer } from '../test-support/range-server.js';
import { HttpStorage } from './http-storage.js';

let dir: string;
const FILE = new Uint8Array(1024 * 1024).map((_, i) => (i * 7 + (i >> 12)) & 0xff);

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'qcowkit-web-http-'));
  writeFileSync(join(dir, 'file.bin'), FILE);
  writeFileSync(join(dir, 'empty.bin'), new Uint8Array(0));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function withServer<T>(options: Parameters<typeof startRangeServer>[1], body: (server: RangeServer) => Promise<T>): Promise<T> {
  const server = await startRangeServer(dir, options);
  try {
    return await body(server);
  } finally {
    await server.close();
  }
}

describe('HttpStorage', () => {
  it('reads any range byte for byte, and the size from Content-Range', async () => {
    await withServer({}, async (server) => {
      const storage = await HttpStorage.open(`${server.url}file.bin`, { blockSize: 4096 });
      expect(await storage.size()).toBe(FILE.length);
      for (const [offset, length] of [[0, 10], [4090, 20], [100_000, 300_000], [FILE.length - 5, 50]] as const) {
        const buffer = new Uint8Array(length);
        const n = await storage.read(buffer, offset);
        expect(n).toBe(Math.min(length, FILE.length - offset));
        expect(buffer.subarray(0, n)).toEqual(FILE.subarray(offset, offset + n));
      }
      expect(await storage.read(new Uint8Array(4), FILE.length)).toBe(0);
    });
  });

  it('serves small reads from cached blocks, and merges concurrent reads of one block into one request', async () => {
    await withServer({}, async (server) => {
      const storage = await HttpStorage.open(`${server.url}file.bin`, { blockSize: 4096 });
      server.reset();
      await Promise.all([0, 1, 2, 3].map((i) => storage.read(new Uint8Array(8), 8192 + i * 8)));
      await storage.read(new Uint8Array(16), 8200);
      expect(server.ranges).toEqual(['bytes=8192-12287']);
      // A read over several missing blocks is one request.
      await storage.read(new Uint8Array(9000), 20_000);
      expect(server.ranges.slice(1)).toEqual(['bytes=16384-32767']);
    });
  });

  it('retries transient failures (503) with backoff, a bounded number of times', async () => {
    await withServer({ failFirst: 2 }, async (server) => {
      const storage = await HttpStorage.open(`${server.url}file.bin`, { retryDelayMs: 10 });
      expect(server.requests).toBe(3);
      expect(await storage.size()).toBe(FILE.length);
    });
    await withServer({ failFirst: 100 }, async (server) => {
      const error = await qcow2Rejection(HttpStorage.open(`${server.url}file.bin`, { retries: 2, retryDelayMs: 10 }));
      expect([error.code, error.missing]).toEqual(['IO_ERROR', false]);
      expect(error.message).toBe('HTTP 503 Service Unavailable (3 attempts)');
      expect(server.requests).toBe(3);
    });
  });

  it('gives up with TIMEOUT when the server does not answer in time', async () => {
    await withServer({ delayMs: 1000 }, async (server) => {
      const error = await qcow2Rejection(HttpStorage.open(`${server.url}file.bin`, { timeoutMs: 100, retries: 1, retryDelayMs: 10 }));
      expect(error.code).toBe('TIMEOUT');
      expect(error.message).toBe('no answer within 100 ms (2 attempts)');
    });
  });

  it('refuses a server that ignores Range, and reports a missing file', async () => {
    await withServer({ ranges: false }, async (server) => {
      const error = await qcow2Rejection(HttpStorage.open(`${server.url}file.bin`));
      expect(error.code).toBe('RANGE_NOT_SUPPORTED');
      expect(server.requests).toBe(1);
    });
    await withServer({}, async (server) => {
      const error = await qcow2Rejection(HttpStorage.open(`${server.url}missing.bin`));
      expect([error.code, error.file, error.missing]).toEqual(['IO_ERROR', `${server.url}missing.bin`, true]);
    });
  });

  it('opens an empty file (416 with bytes */0), and is read-only', async () => {
    await withServer({}, async (server) => {
      const storage = await HttpStorage.open(`${server.url}empty.bin`);
      expect(await storage.size()).toBe(0);
      expect((await qcow2Rejection(storage.write())).code).toBe('READ_ONLY');
    });
  });
});
