import { execFileSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startRangeServer, type RangeServer } from '../test-support/range-server.js';
import { examplesUnder, linkPackages, outputMatches, runExamples, type DocExample } from '../test-support/doc-examples.js';

const src = fileURLToPath(new URL('..', import.meta.url));
const packageDir = fileURLToPath(new URL('../..', import.meta.url));
let dir: string;
let examples: DocExample[];
let server: RangeServer;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'qcowkit-web-examples-'));
  await linkPackages(dir, { '@qcowkit/qcow2': packageDir });
  // Examples that open "disk.qcow2" from the current directory find one made by qemu-img.
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', join(dir, 'disk.qcow2'), '64M']);
  examples = await examplesUnder(src);
  // The HTTP example's URL points at a local server of the same directory.
  server = await startRangeServer(dir);
});

afterAll(async () => {
  await server?.close();
  await rm(dir, { recursive: true, force: true });
});

describe('the @example blocks of the documented API', () => {
  it('are at least ten, and each one runs and prints what its comments say', async () => {
    expect(examples.length).toBeGreaterThanOrEqual(10);
    for (const { example, lines } of await runExamples(examples, dir, (code) => code.replaceAll('https://example.com/images/', server.url))) {
      expect(lines.length, `${example.source}: printed nothing`).toBeGreaterThanOrEqual(example.expected.length);
      example.expected.forEach((expected, i) => {
        expect(outputMatches(lines[i]!, expected), `${example.source}: printed "${lines[i]}", its comment says "${expected}"`).toBe(true);
      });
    }
  }, 300_000);
});
