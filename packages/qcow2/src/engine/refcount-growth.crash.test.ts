import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { requireQemuImg } from '../../../../fixtures/corpus.js';
import { qemuCheck } from '../test-support/guest-model.js';
import { runWithCrash } from '../test-support/crash-run.js';
import type { Qcow2Device } from '../device/qcow2-device.js';

/**
 * Guest writes that keep creating refcount blocks, stopped before every one of their writes in turn: with
 * 512-byte clusters and 64-bit refcounts a block covers 64 clusters, so new blocks often land in each other's
 * ranges. Every prefix must be clean or leak for qemu-img check. This caught a table entry written before the
 * entry of the block that counts it (ERROR cluster 832 refcount=0 reference=1, seen once in the random kill
 * test and then found at write 136 of this sequence).
 */
const OPS = 40;

async function workload(device: Qcow2Device): Promise<void> {
  let seed = 1;
  const random = (): number => {
    seed ^= seed << 13;
    seed ^= seed >>> 17;
    seed ^= seed << 5;
    return (seed >>> 0) / 0x100000000;
  };
  for (let i = 0; i < OPS; i++) {
    const offset = Math.floor(random() * device.size);
    const length = Math.min(device.size - offset, 1 + Math.floor(random() * 256 * 1024));
    const action = random();
    if (action < 0.6) await device.write(new Uint8Array(length).fill(i & 0xff), offset);
    else if (action < 0.75) await device.writeZeroes(offset, length, { unmap: random() < 0.5 });
    else if (action < 0.85) await device.discard(offset, length);
    // (the random kill test's compressed writes are left out: they draw no random numbers)
    if (random() < 0.1) await device.flush();
  }
}

describe('refcount blocks created by guest writes, stopped at every write', () => {
  requireQemuImg();
  it('512-byte clusters, 64-bit refcounts: every prefix is clean or leaks', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'qcowkit-refgrowth-'));
    let initial: Uint8Array;
    try {
      const file = join(dir, 'disk.qcow2');
      const made = spawnSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=512,refcount_bits=64', file, '16M'], { encoding: 'utf8' });
      expect(made.status, made.stderr).toBe(0);
      initial = new Uint8Array(readFileSync(file));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    const whole = await runWithCrash(initial, async (reopen) => workload(await reopen()), Infinity);
    expect(whole.crashed).toBe(false);
    expect(whole.writes).toBeGreaterThan(136);
    const corrupt: string[] = [];
    for (let n = 0; n <= whole.writes; n++) {
      const { bytes } = await runWithCrash(initial, async (reopen) => workload(await reopen()), n);
      const check = qemuCheck(bytes, undefined);
      if (check.status !== 0 && check.status !== 3) corrupt.push(`after ${n} writes: ${check.output.split('\n').filter((l) => l.startsWith('ERROR')).slice(0, 2).join('; ')}`);
    }
    expect(corrupt).toEqual([]);
  }, 600_000);
});
