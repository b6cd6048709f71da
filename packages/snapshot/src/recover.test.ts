/**
 * Recovery decisions against the fake hypervisor, where real libvirt cannot be stopped on demand: a run is
 * "killed" at every hypervisor call of every flow — before the call acts, or after it acted but before the run
 * learnt of it — by a call that never returns; the guest keeps writing; then recoverDomain, on the same fake, must
 * leave the guest exactly as it was (its disks, definition, run state; no job, no temporary file, no intent log)
 * with every write it made meanwhile on its own disk. Then the cases that only the fake can make: a commit that
 * fails during recovery, a guest shut down while on an overlay, leftovers without a log, a live run's log.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { hasQemuImg, isCI, requireQemuImg } from '../../../fixtures/corpus.js';
import { snapshotAllDisks } from './all-disks.js';
import type { IntentRecord } from './intent/intent-log.js';
import { recoverDomain } from './recover.js';
import type { SnapshotOptions } from './snapshot.js';
import type { FakeCall } from './test-support/fake-hypervisor.js';
import { BASE, cleanUpSetups, DURING, expectGoodOutput, expectRestored, setup, SIZE, snapshot, TOP, type Setup } from './test-support/fake-guest.js';
import { qemuImg, verifyRegions, visibleRegions, type Region } from './test-support/images.js';

requireQemuImg();
const haveQemu = hasQemuImg() || isCI();
cleanUpSetups();

const outDirs: string[] = [];
afterEach(() => {
  for (const dir of outDirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

/** A pid that no process has now (a child that already exited). */
function deadPid(): number {
  return spawnSync('true').pid!;
}

/** The killed run's log, as a dead process would have left it. */
function killOwner(s: Setup): IntentRecord {
  const [name] = readdirSync(s.stateDir).filter((f) => f.endsWith('.json'));
  expect(name, 'the run wrote an intent log before it was killed').toBeDefined();
  const path = join(s.stateDir, name!);
  const record = JSON.parse(readFileSync(path, 'utf8')) as IntentRecord;
  record.owner.pid = deadPid();
  writeFileSync(path, JSON.stringify(record));
  return record;
}

async function until(condition: () => boolean, what: () => string = () => ''): Promise<void> {
  for (let i = 0; !condition(); i++) {
    if (i > 2000) throw new Error(`the run never reached the call it was to be killed at ${what()}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** What a flow is asked to do, and how the fake is set up for it. */
interface FlowCase {
  name: string;
  state: 'running' | 'paused';
  options: Partial<SnapshotOptions>;
  agent?: boolean;
  transientJob?: boolean;
  allDisks?: boolean;
}

const FLOWS: FlowCase[] = [
  { name: 'overlay', state: 'running', options: { method: 'overlay' } },
  { name: 'overlay, quiesced', state: 'running', options: { method: 'overlay', quiesce: 'require' }, agent: true },
  { name: 'overlay', state: 'paused', options: { method: 'overlay' } },
  { name: 'mirror', state: 'running', options: { method: 'mirror' } },
  { name: 'mirror, quiesced', state: 'running', options: { method: 'mirror', quiesce: 'require' }, agent: true },
  { name: 'mirror without transient jobs', state: 'running', options: { method: 'mirror' }, transientJob: false },
  { name: 'cold', state: 'running', options: { mode: 'cold' } },
  { name: 'cold', state: 'paused', options: { mode: 'cold' } },
  { name: 'all disks', state: 'running', options: { quiesce: 'require' }, agent: true, allDisks: true },
];

/** Calls that change the domain: killed before and after they act. Others: killed before, at their first call. */
const CHANGING = new Set<FakeCall>(['snapshotDiskOnly', 'blockCopy', 'abortBlockJob', 'blockCommitActive', 'pivotBlockJob', 'managedSave', 'start', 'define', 'undefine', 'fsFreeze', 'fsThaw', 'resume', 'suspend']);

function prepare(c: FlowCase): Setup {
  const s = setup(c.state, { agent: c.agent ?? false });
  if (c.transientJob === false) s.fake.transientJobSupported = false;
  return s;
}

function start(c: FlowCase, s: Setup): Promise<unknown> {
  if (c.allDisks) {
    const outputDir = mkdtempSync(join(tmpdir(), 'qcowkit-vm-all-'));
    outDirs.push(outputDir);
    return snapshotAllDisks(s.fake, { domain: 'guest', outputDir, stateDir: s.stateDir, ...c.options });
  }
  return snapshot(s, c.options);
}

/** The calls a whole run of the flow makes, in order, each with how many of its kind came before. */
async function callsOf(c: FlowCase): Promise<Array<{ call: FakeCall; skip: number }>> {
  const s = prepare(c);
  await start(c, s);
  const seen = new Map<string, number>();
  const out: Array<{ call: FakeCall; skip: number }> = [];
  for (const call of s.fake.calls as FakeCall[]) {
    const skip = seen.get(call) ?? 0;
    seen.set(call, skip + 1);
    out.push({ call, skip });
  }
  return out;
}

/**
 * A running guest whose overlay snapshot run was killed just before its block commit: the guest on the
 * temporary overlay, having written DURING there since. The run's log names a dead process (`dead`), this live
 * one (`alive`), or is gone (`none`).
 */
async function killedOnOverlay(owner: 'dead' | 'alive' | 'none'): Promise<Setup> {
  const s = setup('running');
  s.fake.hangOn('blockCommitActive');
  void snapshot(s).catch(() => {});
  await until(() => s.fake.hung);
  s.fake.guestWrite('guest', 'vda', DURING.pattern, DURING.offset, DURING.length);
  if (owner === 'dead') killOwner(s);
  if (owner === 'none') rmSync(s.stateDir, { recursive: true });
  return s;
}

describe.skipIf(!haveQemu)('recovery from a killed run (fake hypervisor)', () => {
  describe.each(FLOWS.map((c) => [`${c.state} guest, ${c.name}`, c] as const))('%s', (_title, c) => {
    it('killed at each call, before and after it acts: recovery puts everything back, no guest write lost', async () => {
      const kills: Array<{ call: FakeCall; skip: number; after: boolean }> = [];
      for (const { call, skip } of await callsOf(c)) {
        if (CHANGING.has(call)) kills.push({ call, skip, after: false }, { call, skip, after: true });
        else if (skip === 0) kills.push({ call, skip, after: false });
      }
      expect(kills.length).toBeGreaterThan(5);
      for (const kill of kills) {
        const s = prepare(c);
        s.fake.hangOn(kill.call, { after: kill.after, skip: kill.skip });
        let ended: unknown = 'still running';
        start(c, s).then(
          () => (ended = 'succeeded'),
          (error: unknown) => (ended = error),
        );
        const where = `killed ${kill.after ? 'after' : 'before'} ${kill.call}#${kill.skip + 1}`;
        await until(
          () => s.fake.hung,
          () => `${where}: the run ${String(ended)} after ${s.fake.calls.join(' ')}`,
        );
        const hasLog = readdirSync(s.stateDir).length > 0;
        // The guest goes on writing while nobody looks after it (unless it is saved, paused or frozen).
        const d = s.fake.domain('guest');
        const writes: Region[] = [];
        if (d.state === 'running' && !d.frozen) {
          s.fake.guestWrite('guest', 'vda', DURING.pattern, DURING.offset, DURING.length);
          writes.push(DURING);
        }
        if (hasLog) killOwner(s);
        const report = await recoverDomain(s.fake, 'guest', { stateDir: s.stateDir, inFlightTimeoutMs: 0 }).catch((error: unknown) => {
          throw new Error(`${where}: ${String(error)}`);
        });
        expect(report.nothingToDo, where).toBe(!hasLog && report.actions.length === 0);
        try {
          expectRestored(s, writes);
        } catch (error) {
          throw new Error(`${where}: ${String(error)}\nactions: ${report.actions.join('\n')}`);
        }
        const again = await recoverDomain(s.fake, 'guest', { stateDir: s.stateDir, inFlightTimeoutMs: 0 });
        expect(again.nothingToDo, `${where}: a second recovery has nothing to do`).toBe(true);
      }
    }, 300_000);
  });

  it('a run killed after its snapshot: the next vm snapshot recovers first, then succeeds', async () => {
    const s = await killedOnOverlay('dead');
    const overlay = s.fake.domain('guest').disks[0]!.chain[0]!.path!;
    const steps: string[] = [];
    const result = await snapshot(s, { onStep: (step) => steps.push(step) });
    expect(steps.slice(0, 2)).toEqual(['inspect', 'recover']);
    expect(result.notes.join()).toContain(`merged the temporary overlay ${overlay} back`);
    expect(readdirSync(s.dir)).not.toContain(overlay.split('/').pop());
    rmSync(s.output);
    expectRestored(s, [DURING]);
  });

  it('with leftovers only libvirt shows (no intent log), vm snapshot refuses and names vm recover; vm recover cleans up', async () => {
    const s = await killedOnOverlay('none');
    await expect(snapshot(s)).rejects.toMatchObject({ code: 'LEFTOVERS', message: expect.stringContaining('qcowkit vm recover guest') });
    const report = await recoverDomain(s.fake, 'guest', { stateDir: s.stateDir, inFlightTimeoutMs: 0 });
    expect(report.intent).toBeUndefined();
    expect(report.actions[0]).toMatch(/^merged the temporary overlay .*qcowkit-overlay-[0-9a-f]{12}\.qcow2 back/);
    // The partial output is not named by libvirt: without a log it cannot be found (it is said in the docs).
    for (const f of readdirSync(s.dir).filter((n) => n.includes('.qcowkit-partial-'))) rmSync(join(s.dir, f));
    // The definition libvirt rewrote cannot be put back to the byte without the saved one: compare the rest.
    const { persistentXml: _ignored, ...after } = s.fake.observe('guest');
    const { persistentXml: _ignored2, ...before } = s.before;
    expect(after).toEqual(before);
    verifyRegions(s.before.chains[0]![0]!, visibleRegions(SIZE, [...BASE, ...TOP, DURING]));
  });

  it('without a log, a copy job into a qcowkit delta is aborted and the delta removed', async () => {
    const s = setup('running');
    s.fake.hangOn('abortBlockJob');
    void snapshot(s, { method: 'mirror' }).catch(() => {});
    await until(() => s.fake.hung);
    rmSync(s.stateDir, { recursive: true });
    const report = await recoverDomain(s.fake, 'guest', { stateDir: s.stateDir, inFlightTimeoutMs: 0 });
    expect(report.actions[0]).toMatch(/^aborted the block copy of guest\/vda into .*qcowkit-delta-/);
    expect(readdirSync(s.dir).filter((n) => n.includes('qcowkit-delta'))).toEqual([]);
    expect(s.fake.domain('guest').job).toBeUndefined();
  });

  it('nothing to do: says so, changes nothing (but a half-written log update of a dead process is removed)', async () => {
    const s = setup('running');
    writeFileSync(join(s.stateDir, `.intent-${deadPid()}-0a1b2c3d.tmp`), '{"half":');
    const report = await recoverDomain(s.fake, 'guest', { stateDir: s.stateDir, inFlightTimeoutMs: 0 });
    expect(report).toMatchObject({ nothingToDo: true, actions: [], intent: undefined });
    expect(s.fake.calls.filter((c) => !['domainInfo', 'disks', 'dumpXml'].includes(c))).toEqual([]);
    expectRestored(s);
  });

  it("refuses a live run's log (IN_PROGRESS), and vm snapshot refuses to start beside it", async () => {
    // The log names this very process, which is alive.
    const s = await killedOnOverlay('alive');
    await expect(recoverDomain(s.fake, 'guest', { stateDir: s.stateDir, inFlightTimeoutMs: 0 })).rejects.toMatchObject({ code: 'IN_PROGRESS' });
    await expect(snapshot(s)).rejects.toMatchObject({ code: 'IN_PROGRESS' });
    expect(s.fake.domain('guest').disks[0]!.chain.length).toBe(3);
  });

  it('a commit that fails during recovery: RECOVERY_INCOMPLETE, the log kept; the next recovery finishes', async () => {
    const s = await killedOnOverlay('dead');
    s.fake.failOn('blockCommitActive', { times: 10 });
    const error = await recoverDomain(s.fake, 'guest', { stateDir: s.stateDir, inFlightTimeoutMs: 0 }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'RECOVERY_INCOMPLETE', message: expect.stringContaining('injected failure of blockCommitActive') });
    expect(readdirSync(s.stateDir).filter((f) => f.endsWith('.json')).length).toBe(1);
    expect(s.fake.domain('guest').disks[0]!.chain.length).toBe(3);
    s.fake.clearFailure('blockCommitActive');
    const report = await recoverDomain(s.fake, 'guest', { stateDir: s.stateDir, inFlightTimeoutMs: 0 });
    expect(report.intent?.step).toBe('blockcommit');
    expectRestored(s, [DURING]);
  });

  it('a guest shut down while on the overlay: the overlay is committed offline and the definition put back', async () => {
    const s = await killedOnOverlay('dead');
    s.fake.domain('guest').state = 'shutoff';
    const report = await recoverDomain(s.fake, 'guest', { stateDir: s.stateDir, inFlightTimeoutMs: 0 });
    expect(report.actions[0]).toMatch(/^merged the temporary overlay .* \(the guest is shut off\)/);
    expect(s.fake.observe('guest')).toEqual({ ...s.before, state: 'shutoff' });
    expect(readdirSync(s.dir).sort()).toEqual(s.files);
    verifyRegions(s.before.chains[0]![0]!, visibleRegions(SIZE, [...BASE, ...TOP, DURING]));
    qemuImg('check', '-q', s.before.chains[0]![0]!);
  });

  it('a domain left transient by the mirror flow and shut down since (gone from libvirt): defined again from the log', async () => {
    const s = setup('running');
    s.fake.transientJobSupported = false;
    s.fake.hangOn('blockCopy', { skip: 1 });
    void snapshot(s, { method: 'mirror' }).catch(() => {});
    await until(() => s.fake.hung);
    killOwner(s);
    expect(s.fake.domain('guest').persistent).toBe(false);
    // A transient domain that stops is gone; the fake keeps its disks to be found again by name.
    const gone = s.fake.domain('guest');
    s.fake.domains.delete('guest');
    const define = s.fake.define.bind(s.fake);
    s.fake.define = async (xml) => {
      if (!s.fake.domains.has('guest')) s.fake.domains.set('guest', { ...gone, state: 'shutoff', job: undefined });
      return define(xml);
    };
    const report = await recoverDomain(s.fake, 'guest', { stateDir: s.stateDir, inFlightTimeoutMs: 0 });
    expect(report.actions[0]).toMatch(/^defined domain guest again from its saved definition .*shut down since/);
    expect(s.fake.observe('guest')).toEqual({ ...s.before, state: 'shutoff' });
    expect(readdirSync(s.dir).sort()).toEqual(s.files);
    expect(readdirSync(s.stateDir)).toEqual([]);
  });

  it('an intent log that cannot be read is an error, never ignored', async () => {
    const s = setup('running');
    const uuid = (await s.fake.domainInfo('guest')).uuid;
    writeFileSync(join(s.stateDir, `${uuid}.json`), '{"not": "a log"}');
    await expect(recoverDomain(s.fake, 'guest', { stateDir: s.stateDir })).rejects.toMatchObject({ code: 'BAD_INTENT_LOG' });
    await expect(snapshot(s)).rejects.toMatchObject({ code: 'BAD_INTENT_LOG' });
  });

  it('all disks: one snapshot call for every disk, each output good, a manifest', async () => {
    const s = setup('running', { agent: true });
    const outputDir = mkdtempSync(join(tmpdir(), 'qcowkit-vm-all-'));
    outDirs.push(outputDir);
    const result = await snapshotAllDisks(s.fake, { domain: 'guest', outputDir, stateDir: s.stateDir, quiesce: 'require' });
    expect(s.fake.calls.filter((c) => c === 'snapshotDiskOnly').length).toBe(1);
    expect(result.quiesced).toBe(true);
    expect(readdirSync(outputDir).sort()).toEqual(['manifest.json', 'vda.qcow2', 'vdb.qcow2']);
    const manifest = JSON.parse(readFileSync(join(outputDir, 'manifest.json'), 'utf8'));
    expect(manifest).toMatchObject({ domain: 'guest', mode: 'live', method: 'overlay', quiesced: true });
    expect(manifest.disks).toEqual([
      { target: 'vda', source: join(s.dir, 'top.qcow2'), format: 'qcow2', virtualSize: SIZE, output: 'vda.qcow2', outputFormat: 'qcow2' },
      { target: 'vdb', source: join(s.dir, 'data.raw'), format: 'raw', virtualSize: 1024 * 1024, output: 'vdb.qcow2', outputFormat: 'qcow2' },
    ]);
    expect(Date.parse(manifest.instant)).toBeGreaterThanOrEqual(Date.parse(manifest.instantNotBefore));
    expectGoodOutput({ ...s, output: join(outputDir, 'vda.qcow2') });
    expect(qemuImg('compare', '-f', 'raw', '-F', 'qcow2', join(s.dir, 'data.raw'), join(outputDir, 'vdb.qcow2')).trim()).toBe('Images are identical.');
    expectRestored(s);
  });
});
