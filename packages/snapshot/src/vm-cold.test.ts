/**
 * Cold snapshots of a real libvirt/QEMU guest (scripts/start-libvirt.sh): a running or paused guest is saved,
 * converted and started again as it was; a shut-off guest is converted and never started; a failed conversion
 * still brings the guest back. One domain for the whole file, removed afterwards whatever happens.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { snapshotDomain, type SnapshotOptions, type SnapshotResult } from './snapshot.js';
import type { Region } from './test-support/images.js';
import { TestGuest, useTestGuest, vmTestsEnabled } from './test-support/libvirt-guest.js';
import { baseline, expectGuestIntact, expectOutputAtSnapshot } from './test-support/vm-checks.js';

const guest = new TestGuest(`qcowkit-test-cold-${process.pid}`);

describe.skipIf(!vmTestsEnabled())('cold snapshots with libvirt', () => {
  useTestGuest(guest);

  async function run(options: Partial<SnapshotOptions>): Promise<{ result: SnapshotResult | undefined; error: unknown; written: Region[]; steps: string[] }> {
    const steps: string[] = [];
    const snapshot = snapshotDomain(guest.hypervisor, { domain: guest.name, output: join(guest.dir, 'out.qcow2'), mode: 'cold', stateDir: guest.stateDir, onStep: (s) => steps.push(s), ...options });
    try {
      return { result: await snapshot, error: undefined, written, steps };
    } catch (error) {
      return { result: undefined, error, written, steps };
    }
  }

  /**
   * A cold snapshot saves the guest: it cannot write while it is saved. Its writes are made just before. (Not
   * concurrently: HMP qemu-io bypasses the stopped vCPUs, and a write after the save inactivated the images
   * makes QEMU abort — "domain is no longer running".)
   */
  let written: Region[] = [];
  async function writeBefore(): Promise<void> {
    const state = guest.state();
    written = state === 'running' || state === 'paused' ? await guest.writeBefore() : [];
  }

  for (const state of ['running', 'paused'] as const) {
    it(`${state} guest: saved, converted, started again ${state}`, async () => {
      guest.prepare(state);
      await writeBefore();
      const before = baseline(guest);
      const output = join(guest.dir, 'out.qcow2');
      const { result, error, steps } = await run({});
      expect(error).toBeUndefined();
      expect(result).toMatchObject({ mode: 'cold', method: undefined, state });
      expect(steps).toEqual(['inspect', 'managedsave', 'convert', 'start', 'publish', 'finish']);
      expectOutputAtSnapshot(guest, output, { before: written });
      expectGuestIntact(guest, before, written, { outputKept: output });
    });
  }

  it.each(['auto', 'cold'] as const)('shut-off guest, mode %s: converted, never started', async (mode) => {
    guest.prepare('shutoff');
    const before = baseline(guest);
    const output = join(guest.dir, 'out.qcow2');
    written = [];
    const { result, error, steps } = await run({ mode });
    expect(error).toBeUndefined();
    expect(result).toMatchObject({ mode: 'cold', state: 'shutoff' });
    expect(steps).toEqual(['inspect', 'convert', 'publish', 'finish']);
    expectOutputAtSnapshot(guest, output, {});
    expectGuestIntact(guest, before, [], { outputKept: output });
  });

  it('writes raw output', async () => {
    guest.prepare('shutoff');
    const output = join(guest.dir, 'out.raw');
    const { error } = await run({ output, format: 'raw' });
    expect(error).toBeUndefined();
    expectOutputAtSnapshot(guest, output, {}, 'raw');
  });

  for (const state of ['running', 'paused', 'shutoff'] as const) {
    it(`${state} guest: a conversion that fails half way still brings the guest back as it was`, async () => {
      guest.prepare(state);
      await writeBefore();
      const before = baseline(guest);
      const injected = new Error('injected conversion failure');
      const { error } = await run({
        onProgress: (done) => {
          if (done > 0) throw injected;
        },
      });
      expect(error).toBe(injected);
      expect(existsSync(join(guest.dir, 'out.qcow2'))).toBe(false);
      expectGuestIntact(guest, before, written);
    });
  }

  it('a running guest under auto mode is snapshotted live, not saved', async () => {
    guest.prepare('running');
    const { result, steps } = await run({ mode: 'auto' });
    expect(result?.mode).toBe('live');
    expect(steps).not.toContain('managedsave');
  });
});
