/**
 * Live snapshots of a real libvirt/QEMU guest (scripts/start-libvirt.sh): overlay and mirror, running and
 * paused, with the guest writing to its disk all through the snapshot; quiesce without an agent; failures.
 * One domain for the whole file, removed afterwards whatever happens.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { LibvirtHypervisor } from './libvirt/libvirt-hypervisor.js';
import { snapshotDomain, type SnapshotOptions, type SnapshotResult } from './snapshot.js';
import type { Region } from './test-support/images.js';
import { TestGuest, useTestGuest, URI, vmTestsEnabled } from './test-support/libvirt-guest.js';
import { baseline, expectGuestIntact, expectOutputAtSnapshot } from './test-support/vm-checks.js';

const guest = new TestGuest(`qcowkit-test-live-${process.pid}`);

describe.skipIf(!vmTestsEnabled())('live snapshots with libvirt', () => {
  useTestGuest(guest);

  interface Run {
    result: SnapshotResult | undefined;
    error: unknown;
    /** Guest writes just before the snapshot (in QEMU's caches when it starts), and during it. */
    before: Region[];
    during: Region[];
    written: Region[];
  }

  async function run(options: Partial<SnapshotOptions>, hypervisor = guest.hypervisor): Promise<Run> {
    const output = join(guest.dir, 'out.qcow2');
    const state = guest.state();
    const before = state === 'running' || state === 'paused' ? await guest.writeBefore() : [];
    const snapshot = snapshotDomain(hypervisor, { domain: guest.name, output, mode: 'live', stateDir: guest.stateDir, ...options });
    if (state !== 'running') {
      try {
        return { result: await snapshot, error: undefined, before, during: [], written: before };
      } catch (error) {
        return { result: undefined, error, before, during: [], written: before };
      }
    }
    const { result, error, written: during } = await guest.writeWhile(snapshot);
    return { result, error, before, during, written: [...before, ...during] };
  }

  for (const state of ['running', 'paused'] as const) {
    for (const method of ['overlay', 'mirror'] as const) {
      it(`${state} guest, ${method}: the output is the disk at the snapshot, the guest keeps every write`, async () => {
        guest.prepare(state);
        const before = baseline(guest);
        const output = join(guest.dir, 'out.qcow2');
        const writes = await run({ method });
        expect(writes.error).toBeUndefined();
        expect(writes.result).toMatchObject({ mode: 'live', method, state, disk: 'vda', diskPath: guest.top });
        if (state === 'running') expect(writes.during.length).toBeGreaterThan(0);
        expectOutputAtSnapshot(guest, output, writes);
        expectGuestIntact(guest, before, writes.written, { outputKept: output });
      });
    }
  }

  it('auto on a running guest is live with the overlay method', async () => {
    guest.prepare('running');
    const before = baseline(guest);
    const output = join(guest.dir, 'out.qcow2');
    const writes = await run({ mode: 'auto' });
    expect(writes.result).toMatchObject({ mode: 'live', method: 'overlay' });
    expectOutputAtSnapshot(guest, output, writes);
    expectGuestIntact(guest, before, writes.written, { outputKept: output });
  });

  it('mirror the old way (no transient block job): undefine, copy, define the saved XML again', async () => {
    guest.prepare('running');
    const before = baseline(guest);
    const output = join(guest.dir, 'out.qcow2');
    const steps: string[] = [];
    const writes = await run({ method: 'mirror', onStep: (s) => steps.push(s) }, new LibvirtHypervisor({ uri: URI, transientJob: false }));
    expect(writes.result?.method).toBe('mirror');
    expect(steps).toContain('undefine');
    expect(steps).toContain('define');
    expectOutputAtSnapshot(guest, output, writes);
    expectGuestIntact(guest, before, writes.written, { outputKept: output });
  });

  it.each(['overlay', 'mirror'] as const)('%s: --quiesce goes on without a connected agent, --require-quiesce fails and leaves nothing', async (method) => {
    guest.prepare('running');
    const before = baseline(guest);
    const output = join(guest.dir, 'out.qcow2');
    const tried = await run({ method, quiesce: 'try' });
    expect(tried.result?.quiesced).toBe(false);
    expect(tried.result?.notes.join()).toMatch(/not quiesced: .*agent is not connected/);
    expectOutputAtSnapshot(guest, output, tried);
    const required = await run({ method, quiesce: 'require' });
    expect(required.error).toMatchObject({ name: 'SnapshotError', code: 'QUIESCE_FAILED' });
    expect(existsSync(output)).toBe(true); // the earlier output: a failed snapshot does not touch a file it did not write
    expectGuestIntact(guest, before, [...tried.written, ...required.written], { outputKept: output });
  });

  for (const state of ['running', 'paused'] as const) {
    it.each(['overlay', 'mirror'] as const)(`${state} guest, %s: a conversion that fails half way leaves the guest as it was`, async (method) => {
      guest.prepare(state);
      const before = baseline(guest);
      const injected = new Error('injected conversion failure');
      const { error, written } = await run({
        method,
        onProgress: (done) => {
          if (done > 0) throw injected;
        },
      });
      expect(error).toBe(injected);
      expect(existsSync(join(guest.dir, 'out.qcow2'))).toBe(false);
      expectGuestIntact(guest, before, written);
    });
  }

  it('refuses a shut-off guest', async () => {
    guest.prepare('shutoff');
    const before = baseline(guest);
    const { error } = await run({});
    expect(error).toMatchObject({ code: 'INVALID_STATE' });
    expectGuestIntact(guest, before, []);
  });
});
