/**
 * The flows against a fake hypervisor (test-support/fake-hypervisor.ts) on real image files: every mode and
 * method from every guest state, and a failure injected at every step — each must leave the guest as it was,
 * with nothing left behind, and report the failure that stopped it.
 */
import { existsSync, readdirSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { isCI, requireQemuImg, hasQemuImg } from '../../../fixtures/corpus.js';
import { createQcow2 } from '@qcowkit/qcow2/engine';
import { FileStorage } from '@qcowkit/qcow2/node';
import { HypervisorError, SnapshotError } from './errors.js';
import type { SnapshotOptions } from './snapshot.js';
import type { FakeCall } from './test-support/fake-hypervisor.js';
import { BASE, cleanUpSetups, DURING, expectGoodOutput, expectRestored, setup, SIZE, snapshot, TOP } from './test-support/fake-guest.js';
import { compareImages, MiB, qemuImg, verifyRegions, visibleRegions } from './test-support/images.js';

requireQemuImg();
const haveQemu = hasQemuImg() || isCI();
cleanUpSetups();

describe.skipIf(!haveQemu)('snapshot flows (fake hypervisor)', () => {
  describe.each(['running', 'paused'] as const)('%s guest', (state) => {
    it.each([
      ['auto', undefined, 'snapshotDiskOnly'],
      ['live', 'overlay', 'snapshotDiskOnly'],
      ['live', 'mirror', 'blockCopy'],
      ['cold', undefined, 'managedSave'],
    ] as const)('mode %s, method %s', async (mode, method, marker) => {
      const s = setup(state);
      const writeDuring = state === 'running';
      const result = await snapshot(s, {
        mode,
        ...(method === undefined ? {} : { method }),
        onStep: (step) => {
          if (step === 'convert' && writeDuring && mode !== 'cold') s.fake.guestWrite('guest', 'vda', DURING.pattern, DURING.offset, DURING.length);
        },
      });
      expect(result).toMatchObject({ domain: 'guest', disk: 'vda', mode: mode === 'cold' ? 'cold' : 'live', state });
      expect(result.method).toBe(mode === 'cold' ? undefined : (method ?? 'overlay'));
      expect(s.fake.calls).toContain(marker);
      expectGoodOutput(s);
      rmSync(s.output);
      expectRestored(s, writeDuring && mode !== 'cold' ? [DURING] : []);
      if (mode !== 'cold') expect(s.fake.calls).not.toContain('managedSave');
    });

    it('writes raw output, and compressed qcow2', async () => {
      const s = setup(state);
      await snapshot(s, { format: 'raw' });
      expectGoodOutput(s, 'raw');
      await snapshot(s, { compress: true, method: 'mirror' });
      expectGoodOutput(s);
      // 5 MiB of one-byte patterns: compressed clusters take a few KiB.
      expect(statSync(s.output).size).toBeLessThan(MiB);
    });
  });

  describe('shut-off guest', () => {
    it.each(['auto', 'cold'] as const)('mode %s: cold, never started', async (mode) => {
      const s = setup('shutoff');
      const result = await snapshot(s, { mode });
      expect(result).toMatchObject({ mode: 'cold', state: 'shutoff', method: undefined });
      expect(s.fake.calls).not.toContain('start');
      expect(s.fake.calls).not.toContain('managedSave');
      expectGoodOutput(s);
      rmSync(s.output);
      expectRestored(s);
    });

    it('mode live is refused', async () => {
      const s = setup('shutoff');
      await expect(snapshot(s, { mode: 'live' })).rejects.toMatchObject({ code: 'INVALID_STATE' });
      expectRestored(s);
    });

    it('follows the image headers where the definition lists no backing file, with the header format', async () => {
      const s = setup('shutoff');
      // qemu-img 7.2 no longer writes such headers; the engine still can.
      const storage = await FileStorage.open(join(s.dir, 'top.qcow2'), { create: true });
      await createQcow2(storage, { size: SIZE, backingFile: join(s.dir, 'base.qcow2') });
      await storage.close();
      await expect(snapshot(s)).rejects.toMatchObject({ code: 'BACKING_FORMAT_UNKNOWN' });
      expect(existsSync(s.output)).toBe(false);
    });
  });

  it('auto takes cold on a hypervisor that is not QEMU', async () => {
    const s = setup('running', { virtType: 'xen' });
    expect((await snapshot(s)).mode).toBe('cold');
    await expect(snapshot(s, { mode: 'live' })).rejects.toMatchObject({ code: 'INVALID_STATE' });
  });

  it('refuses an output that is an image of the chain, before touching the guest', async () => {
    const s = setup('running');
    for (const method of ['overlay', 'mirror'] as const) {
      await expect(snapshot(s, { method, output: join(s.dir, 'base.qcow2') })).rejects.toMatchObject({ code: 'BAD_ARGUMENT' });
    }
    await expect(snapshot(s, { mode: 'cold', output: join(s.dir, 'top.qcow2') })).rejects.toMatchObject({ code: 'BAD_ARGUMENT' });
    expect(s.fake.calls).not.toContain('snapshotDiskOnly');
    expect(s.fake.calls).not.toContain('managedSave');
    expectRestored(s);
  });

  it('refuses an unknown disk and a disk with a format it does not know, never probing', async () => {
    const s = setup('running');
    await expect(snapshot(s, { disk: 'vdz' })).rejects.toMatchObject({ code: 'NO_SUCH_DISK' });
    s.fake.domain('guest').disks[1]!.chain[0]!.format = 'vmdk';
    await expect(snapshot(s, { disk: 'vdb' })).rejects.toMatchObject({ code: 'UNSUPPORTED_FORMAT' });
    expectRestored(s);
  });

  it('reads a disk declared raw as raw, even with a qcow2 header inside (CVE-2015-7548)', async () => {
    const s = setup('shutoff');
    // The guest wrote a qcow2 image (naming a host file as its backing file) into its raw disk.
    const evil = join(s.dir, 'evil.qcow2');
    qemuImg('create', '-q', '-f', 'qcow2', '-b', '/etc/passwd', '-F', 'raw', evil, String(MiB));
    s.fake.domain('guest').disks[1]!.chain[0]!.path = evil;
    await snapshot(s, { disk: 'vdb', format: 'raw' });
    expect(compareImages(evil, s.output, ['raw', 'raw']).identical).toBe(true);
  });

  it('refuses a backing file the domain XML does not list', async () => {
    const s = setup('running');
    s.fake.domain('guest').disks[0]!.chain[1]!.path = join(s.dir, 'other.qcow2');
    await expect(snapshot(s)).rejects.toMatchObject({ code: 'CHAIN_MISMATCH' });
  });

  it('refuses to start while someone else runs a block job on the disk', async () => {
    const s = setup('running');
    s.fake.domain('guest').job = { target: 'vda', type: 'Backup' };
    for (const method of ['overlay', 'mirror'] as const) await expect(snapshot(s, { method })).rejects.toMatchObject({ code: 'BLOCK_JOB_ACTIVE' });
    expect(s.fake.domain('guest').job).toEqual({ target: 'vda', type: 'Backup' });
  });

  describe('quiesce', () => {
    it('overlay: passes --quiesce to the snapshot when the agent answers', async () => {
      const s = setup('running', { agent: true });
      const result = await snapshot(s, { quiesce: 'require' });
      expect(result.quiesced).toBe(true);
      expectGoodOutput(s);
    });

    it('mirror: freezes after the copy converged and thaws before converting', async () => {
      const s = setup('running', { agent: true });
      const result = await snapshot(s, { method: 'mirror', quiesce: 'require' });
      expect(result.quiesced).toBe(true);
      const calls = s.fake.calls.filter((c) => ['blockCopy', 'fsFreeze', 'abortBlockJob', 'fsThaw'].includes(c));
      expect(calls).toEqual(['blockCopy', 'fsFreeze', 'abortBlockJob', 'fsThaw']);
      expect(s.fake.domain('guest').frozen).toBe(false);
    });

    it.each(['overlay', 'mirror'] as const)('%s: --quiesce goes on without an agent, --require-quiesce fails cleanly', async (method) => {
      const s = setup('running');
      const result = await snapshot(s, { method, quiesce: 'try' });
      expect(result.quiesced).toBe(false);
      expect(result.notes.join()).toMatch(/not quiesced: .*guest agent is not configured/);
      expectGoodOutput(s);
      rmSync(s.output);
      await expect(snapshot(s, { method, quiesce: 'require' })).rejects.toMatchObject({ code: 'QUIESCE_FAILED' });
      expectRestored(s);
    });

    it('a paused guest cannot be quiesced: try goes on, require fails', async () => {
      const s = setup('paused', { agent: true });
      expect((await snapshot(s, { quiesce: 'try' })).quiesced).toBe(false);
      rmSync(s.output);
      await expect(snapshot(s, { quiesce: 'require' })).rejects.toMatchObject({ code: 'QUIESCE_FAILED' });
      expectRestored(s);
    });
  });

  it('mirror without transient block jobs: undefines for the copy and defines the saved XML again', async () => {
    const s = setup('running');
    s.fake.transientJobSupported = false;
    await snapshot(s, { method: 'mirror' });
    expect(s.fake.calls.filter((c) => ['blockCopy', 'undefine', 'abortBlockJob', 'define'].includes(c))).toEqual(['blockCopy', 'undefine', 'blockCopy', 'abortBlockJob', 'define']);
    expectGoodOutput(s);
    rmSync(s.output);
    expectRestored(s);
  });

  it('mirror of a transient domain: nothing to undefine or define', async () => {
    const s = setup('running', { persistent: false });
    s.fake.transientJobSupported = false;
    await snapshot(s, { method: 'mirror' });
    expect(s.fake.calls).not.toContain('undefine');
    expect(s.fake.calls).not.toContain('define');
    expectGoodOutput(s);
  });

  describe('a failure at each step leaves the guest as it was and reports that failure', () => {
    interface Case {
      name: string;
      state: 'running' | 'paused' | 'shutoff';
      options: Partial<SnapshotOptions>;
      call?: FakeCall;
      after?: boolean;
      skip?: number;
      agent?: boolean;
      transientJob?: boolean;
    }
    const cases: Case[] = [];
    for (const state of ['running', 'paused'] as const) {
      const overlay = { mode: 'live', method: 'overlay' } as const;
      const mirror = { mode: 'live', method: 'mirror' } as const;
      const cold = { mode: 'cold' } as const;
      cases.push(
        { name: 'domain info', state, options: overlay, call: 'domainInfo' },
        { name: 'disk list', state, options: overlay, call: 'disks' },
        { name: 'block job check', state, options: overlay, call: 'blockJob' },
        { name: 'dumpxml', state, options: overlay, call: 'dumpXml' },
        { name: 'snapshot', state, options: overlay, call: 'snapshotDiskOnly' },
        { name: 'snapshot (taken, then reported failed)', state, options: overlay, call: 'snapshotDiskOnly', after: true },
        { name: 'quiesced snapshot', state, options: { ...overlay, quiesce: 'try' }, call: 'snapshotDiskOnly', agent: true },
        { name: 'check of the new chain', state, options: overlay, call: 'disks', skip: 1 },
        { name: 'conversion', state, options: overlay },
        { name: 'dumpxml', state, options: mirror, call: 'dumpXml' },
        { name: 'blockcopy', state, options: mirror, call: 'blockCopy' },
        { name: 'blockcopy (started, then reported failed)', state, options: mirror, call: 'blockCopy', after: true },
        { name: 'undefine', state, options: mirror, call: 'undefine', transientJob: false },
        { name: 'blockcopy after undefine', state, options: mirror, call: 'blockCopy', skip: 1, transientJob: false },
        { name: 'blockjob abort', state, options: mirror, call: 'abortBlockJob' },
        { name: 'conversion', state, options: mirror },
        { name: 'conversion (undefined for the copy)', state, options: mirror, transientJob: false },
        { name: 'managedsave', state, options: cold, call: 'managedSave' },
        { name: 'managedsave (saved, then reported failed)', state, options: cold, call: 'managedSave', after: true },
        { name: 'conversion', state, options: cold },
      );
    }
    cases.push(
      { name: 'fsfreeze', state: 'running', options: { method: 'mirror', quiesce: 'try' }, call: 'fsFreeze', agent: true },
      { name: 'fsfreeze (frozen, then reported failed)', state: 'running', options: { method: 'mirror', quiesce: 'try' }, call: 'fsFreeze', agent: true, after: true },
      { name: 'conversion', state: 'shutoff', options: { mode: 'cold' } },
      { name: 'domain info', state: 'shutoff', options: {}, call: 'domainInfo' },
    );

    it.each(cases.map((c) => [`${c.state} guest, ${c.options.mode ?? 'auto'} ${c.options.method ?? ''}: ${c.name}`, c] as const))('%s', async (_title, c) => {
      const s = setup(c.state, { agent: c.agent ?? false });
      if (c.transientJob === false) s.fake.transientJobSupported = false;
      let injected: Error;
      let onProgress: SnapshotOptions['onProgress'];
      if (c.call === undefined) {
        injected = new Error('injected conversion failure');
        onProgress = (done) => {
          if (done > 0) throw injected;
        };
      } else {
        injected = s.fake.failOn(c.call, { after: c.after ?? false, skip: c.skip ?? 0 });
      }
      const failure = await snapshot(s, { ...c.options, ...(onProgress ? { onProgress } : {}) }).then(
        () => undefined,
        (error: unknown) => error,
      );
      expect(failure).toBe(injected);
      expectRestored(s);
    });
  });

  describe('failures while putting the guest back', () => {
    it('a restore step that fails once is tried again: the snapshot succeeds', async () => {
      for (const [call, options] of [
        ['blockCommitActive', { method: 'overlay' }],
        ['define', { method: 'mirror' }],
        ['start', { mode: 'cold' }],
        ['resume', { mode: 'cold' }],
      ] as const) {
        const s = setup('running');
        if (call === 'define') s.fake.transientJobSupported = false;
        if (call === 'resume') {
          // The saved guest comes back paused; it must be resumed.
          const start = s.fake.start.bind(s.fake);
          s.fake.start = (name) => start(name, { paused: true });
        }
        s.fake.failOn(call);
        await snapshot(s, options);
        expect(s.fake.calls.filter((c) => c === call).length).toBe(2);
        expectGoodOutput(s);
        rmSync(s.output);
        expectRestored(s);
      }
    });

    it('overlay: a block commit that keeps failing leaves the guest running on the overlay, nothing lost', async () => {
      const s = setup('running');
      s.fake.failOn('blockCommitActive', { times: 2 });
      let overlay = '';
      const error = await snapshot(s, {
        onStep: (step) => {
          if (step === 'convert') {
            overlay = s.fake.domain('guest').disks[0]!.chain[0]!.path!;
            s.fake.guestWrite('guest', 'vda', DURING.pattern, DURING.offset, DURING.length);
          }
        },
      }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(SnapshotError);
      expect(error).toMatchObject({ code: 'OVERLAY_KEPT' });
      expect((error as Error).message).toContain(overlay);
      expect(existsSync(s.output)).toBe(false);
      const d = s.fake.domain('guest');
      expect(d.state).toBe('running');
      expect(d.disks[0]!.chain[0]!.path).toBe(overlay);
      expect(existsSync(overlay)).toBe(true);
      verifyRegions(overlay, visibleRegions(SIZE, [...BASE, ...TOP, DURING]));
    });

    it('mirror: define failing twice reports the snapshot error and the transient domain', async () => {
      const s = setup('running');
      s.fake.transientJobSupported = false;
      s.fake.failOn('define', { times: 2 });
      const convert = new Error('injected conversion failure');
      const error = await snapshot(s, { method: 'mirror' }).catch((e: unknown) => e);
      expect(error).toMatchObject({ code: 'RESTORE_FAILED' });
      expect((error as Error).message).toMatch(/transient now/);
      void convert;
      expect(readdirSync(s.dir).sort()).toEqual(s.files);
    });

    it('cold: a guest that will not start again is reported with the conversion error', async () => {
      const s = setup('running');
      s.fake.failOn('start', { times: 2 });
      const error = await snapshot(s, {
        mode: 'cold',
        onProgress: () => {
          throw new Error('injected conversion failure');
        },
      }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(SnapshotError);
      expect(error).toMatchObject({ code: 'RESTORE_FAILED' });
      expect((error as SnapshotError).message).toMatch(/^injected conversion failure; then putting the guest back failed: .*injected failure of start/);
      expect(((error as SnapshotError).cause as Error).message).toBe('injected conversion failure');
      expect((error as SnapshotError).restoreErrors.length).toBe(1);
      expect(existsSync(s.output)).toBe(false);
    });

    it('hypervisor errors keep their class and code', async () => {
      const s = setup('running');
      s.fake.failOn('snapshotDiskOnly', { code: 'TIMEOUT' });
      const error = await snapshot(s).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(HypervisorError);
      expect(error).toMatchObject({ code: 'TIMEOUT' });
    });
  });
});
