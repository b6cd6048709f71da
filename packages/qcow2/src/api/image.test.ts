import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { Qcow2Error } from '../errors.js';
import { memoryHost } from './memory-host.js';
import { create } from './create.js';
import { open } from './open.js';
import { createSnapshot } from './create-snapshot.js';
import { write } from './write.js';

const ENTRY = fileURLToPath(new URL('../../dist/index.js', import.meta.url));

/** Runs a script against the built package in a Node with --expose-gc; returns what it wrote to stderr. */
function stderrOf(body: string): string {
  const script = `
    const { create, memoryHost } = await import(${JSON.stringify(ENTRY)});
    const host = memoryHost();
    ${body}
    for (let i = 0; i < 5; i++) { globalThis.gc(); await new Promise((r) => setTimeout(r, 20)); }
  `;
  const result = spawnSync(process.execPath, ['--expose-gc', '--input-type=module', '-e', script], { encoding: 'utf8' });
  expect(result.status, result.stderr).toBe(0);
  return result.stderr;
}

describe('Image', () => {
  it('warns (in Node) when a writable image is dropped without close, and not when it was closed', () => {
    const dropped = stderrOf(`await (async () => { const image = await create('lost.qcow2', { host, size: 1 << 20 }); })();`);
    expect(dropped).toContain("QcowkitWarning: qcowkit: image 'lost.qcow2' was opened writable and never closed");
    const closed = stderrOf(`await (async () => { const image = await create('kept.qcow2', { host, size: 1 << 20 }); await image.close(); })();`);
    expect(closed).toBe('');
  });

  it('closes with await using, and refuses snapshots and writes on read-only images with READ_ONLY', async () => {
    const host = memoryHost();
    {
      await using image = await create('disk.qcow2', { host, size: 1 << 20 });
      await write(image, new Uint8Array([1]), 0);
      expect(image.writable).toBe(true);
    }
    // Closed by the block above: the file was flushed and can be reopened with its data.
    const image = await open('disk.qcow2', { host });
    expect([image.format, image.virtualSize, image.clusterSize, image.backingFile, image.snapshots.length]).toEqual(['qcow2', 1 << 20, 65536, undefined, 0]);
    for (const attempt of [createSnapshot(image, { name: 'x' }), write(image, new Uint8Array(1), 0)]) {
      const error = await attempt.catch((e: unknown) => e);
      expect(error).toBeInstanceOf(Qcow2Error);
      expect((error as Qcow2Error).code).toBe('READ_ONLY');
    }
    await image.close();
    await image.close();
  });
});
