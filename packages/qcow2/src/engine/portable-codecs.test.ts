import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { qcow2Rejection } from '../test-support/qcow2-rejection.js';
import { startRangeServer, type RangeServer } from '../test-support/range-server.js';
import { portableCodecsWith } from './portable-codecs.js';

/** A zstd frame of 4 KiB of 'a', as the zstd command line writes it (`head -c 4096 /dev/zero | tr '\0' a | zstd -3`). */
let frame: Uint8Array;
let dir: string;
let server: RangeServer;
const zstdMain = createRequire(import.meta.url).resolve('@bokuweb/zstd-wasm');
const wasmPath = join(zstdMain.slice(0, zstdMain.lastIndexOf('/dist/')), 'dist/web/zstd.wasm');

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'qcowkit-web-codecs-'));
  writeFileSync(join(dir, 'not-wasm.wasm'), '<html>404 page of a single-page app</html>');
  server = await startRangeServer(dir);
  frame = new Uint8Array(Buffer.from('28b52ffd04584d00001061610100fbf7011603162c89', 'hex'));
});

afterAll(async () => {
  await server.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('the zstd module given by location', () => {
  it('fails with CODEC_UNAVAILABLE, at once, when it is not served or is not WebAssembly; loads when it is', async () => {
    const missing = await qcow2Rejection(Promise.resolve(portableCodecsWith({ zstdWasm: `${server.url}missing.wasm` }).zstdDecompress(frame, 4096)));
    expect(missing.code).toBe('CODEC_UNAVAILABLE');
    expect(missing.message).toBe(`cannot load the zstd decoder: ${server.url}missing.wasm: HTTP 404`);
    const html = await qcow2Rejection(Promise.resolve(portableCodecsWith({ zstdWasm: `${server.url}not-wasm.wasm` }).zstdDecompress(frame, 4096)));
    expect(html.code).toBe('CODEC_UNAVAILABLE');
    expect(html.message).toMatch(/^cannot load the zstd decoder: not a WebAssembly module/);
    // After failures, the real bytes load (a failed load is not cached).
    const out = await portableCodecsWith({ zstdWasm: new Uint8Array(readFileSync(wasmPath)) }).zstdDecompress(frame, 4096);
    expect(out).toEqual(new Uint8Array(4096).fill(0x61));
  });
});
