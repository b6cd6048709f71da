/**
 * `qcowkit vm snapshot` and `vm recover` on a real Linux guest (test-support/linux-guest.ts: Debian, systemd,
 * qemu-guest-agent with an fsfreeze hook, a writer appending fsync'ed lines to a file on each of its two disks),
 * as a user would run them. One guest is booted for the whole file and the flows run on it in turn.
 *
 * - Every flow (overlay and mirror quiesced, cold, all disks): the output passes qemu-img check; quiesced, e2fsck
 *   finds it clean as it is (and the fsfreeze hook's marker is in it); cold, clean once the journal is replayed;
 *   the writer's file is there, whole, up to the snapshot's instant; the guest runs on its own disks afterwards
 *   with nothing left behind. All disks: the second disk never holds a line the first lacks.
 * - A failure that real libvirt can be made to have (no space for the output, the overlay or the delta)
 *   leaves the guest as it was.
 * - `vm snapshot` killed (SIGKILL) at every step of every flow, and at random moments, then `vm recover`: the
 *   guest runs on its own disks, no backing file added, no block job, no temporary file, no intent log, and what
 *   the guest wrote while it ran on a temporary overlay is on its own disk. A second `vm snapshot` after a kill
 *   recovers first and works; `vm recover` with nothing to do says so and exits 0.
 *
 * Needs libvirtd (scripts/start-libvirt.sh) and root (the guest image is built with debootstrap by
 * scripts/build-test-guest.sh, cached under build/). Skipped locally without libvirt; failing on CI.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { checkImage, imageInfo } from '../../../snapshot/src/test-support/images.js';
import { libvirtStatus, virsh, vmTestsEnabled } from '../../../snapshot/src/test-support/libvirt-guest.js';
import { guestImage, HOOK_MARKER, LinuxGuest, readExt4, WRITER_LOGS_IN_IMAGE as IN_IMAGE, writerLines } from '../../../snapshot/src/test-support/linux-guest.js';
import { CLI_MAIN } from '../test-support/run-cli.js';

const NAME = `qcowkit-vm-linux-${process.pid}`;
let guest: LinuxGuest;
/** Where the outputs go (beside the guest's disks: QEMU must reach the temporary overlays there). */
let out: string;
/** How long a whole run of each flow took (the flow tests measure it; the random kills fall within it). */
const durations = new Map<string, number>();

interface CliRun {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/** `qcowkit ARGS` on the guest, as a separate process; killed with SIGKILL after `killAfterMs` if given. */
function qcowkit(args: string[], options: { env?: NodeJS.ProcessEnv; killAfterMs?: number } = {}): Promise<CliRun> {
  const started = Date.now();
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI_MAIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: guest.env(options.env) });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = options.killAfterMs === undefined ? undefined : setTimeout(() => child.kill('SIGKILL'), options.killAfterMs);
    child.on('error', reject);
    child.on('close', (status, signal) => {
      if (timer !== undefined) clearTimeout(timer);
      resolve({ status, signal, stdout, stderr, ms: Date.now() - started });
    });
  });
}

/** What must be the same after a snapshot (or a recovery) as before it. */
interface Baseline {
  inactiveXml: string;
  files: string[];
}

function baseline(): Baseline {
  return { inactiveXml: virsh('dumpxml', '--inactive', '--security-info', `--domain=${NAME}`), files: guest.files() };
}

async function sleep(ms: number): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, ms));
}

/** The writer's last line on vda grows: the guest runs and is not frozen. */
async function expectWriting(): Promise<number> {
  const first = guest.writerSeq('vda');
  for (let i = 0; i < 40; i++) {
    await sleep(250);
    const now = guest.writerSeq('vda');
    if (now > first) return now;
  }
  throw new Error(`the guest's writer is stuck at line ${first} (frozen, paused or dead?)`);
}

/** The guest as it was: running on its own disks (no backing file added), no job, nothing left behind. */
async function expectGuestBack(before: Baseline, what: string): Promise<void> {
  expect(guest.state(), what).toBe('running');
  const live = virsh('dumpxml', `--domain=${NAME}`);
  expect(guest.liveChain('vda', live), what).toEqual([guest.vda, guest.image.root]);
  expect(guest.liveChain('vdb', live), what).toEqual([guest.vdb, guest.image.data]);
  expect(imageInfo(guest.vda)['backing-filename'], what).toBe(guest.image.root);
  expect(imageInfo(guest.vdb)['backing-filename'], what).toBe(guest.image.data);
  expect(guest.blockJob('vda'), what).toBe('');
  expect(guest.blockJob('vdb'), what).toBe('');
  expect(guest.files(), what).toEqual(before.files);
  expect(readdirSync(out).filter((f) => f.includes('.qcowkit-')), what).toEqual([]);
  expect(existsSync(guest.stateDir) ? readdirSync(guest.stateDir) : [], what).toEqual([]);
  expect(virsh('dumpxml', '--inactive', '--security-info', `--domain=${NAME}`), what).toBe(before.inactiveXml);
  await expectWriting();
}

/** The number of times the fsfreeze hook ran, as the guest sees its marker now. */
async function freezeCount(): Promise<number> {
  const r = await guest.exec('/bin/cat', [HOOK_MARKER]);
  return r.exitCode === 0 ? r.stdout.trim().split('\n').filter((l) => l.startsWith('freeze')).length : 0;
}

/**
 * A snapshot's root file system: clean (as it is when quiesced, else after the journal replay), the writer's
 * log whole from line 1 to a line between `from` - 1 (the last line the guest had fsync'ed when the snapshot
 * started; the one it showed may still have been in flight) and `to` (the last it had written when it ended).
 * Returns the last line.
 */
function expectRootAt(image: string, format: 'qcow2' | 'raw', window: { from: number; to: number }, quiesced: boolean, freezes?: number): number {
  const view = readExt4(image, format, [IN_IMAGE.vda, HOOK_MARKER]);
  if (quiesced) expect(view.cleanAsIs, view.fsckAsIs).toBe(true);
  expect(view.cleanAfterReplay, view.fsckAfterReplay).toBe(true);
  const lines = writerLines(view.files.get(IN_IMAGE.vda), `${image}: ${IN_IMAGE.vda}`);
  expect(lines[0]).toBe(1);
  const last = lines[lines.length - 1]!;
  expect(last).toBeGreaterThanOrEqual(window.from - 1);
  expect(last).toBeLessThanOrEqual(window.to);
  if (freezes !== undefined) {
    // The hook ran before the freeze, and its synced marker is in the snapshot.
    const marker = view.files.get(HOOK_MARKER) ?? '';
    expect(marker.trim().split('\n').pop()).toBe(`freeze ${freezes}`);
  }
  return last;
}

const describeGuest = describe.skipIf(!vmTestsEnabled());

describeGuest('vm snapshot and vm recover on a real Linux guest', () => {
  beforeAll(async () => {
    if (!libvirtStatus().available) return;
    const image = guestImage();
    guest = new LinuxGuest(NAME, image);
    guest.create();
    out = join(guest.dir, 'out');
    mkdirSync(out);
    await guest.boot();
    process.stderr.write(`vm-linux-guest: image ${image.buildSeconds > 0 ? `built in ${image.buildSeconds} s` : 'from the cache'}; booted (${guest.virtType}) in ${guest.bootSeconds} s\n`);
  }, 30 * 60_000);
  beforeEach(() => {
    const status = libvirtStatus();
    if (!status.available) throw new Error(`CI is set and the VM tests cannot run: ${status.reason}`);
    for (const f of readdirSync(out)) rmSync(join(out, f), { recursive: true, force: true });
  });
  afterAll(() => guest?.destroy());

  describe('flows', () => {
    for (const method of ['overlay', 'mirror'] as const) {
      it(`live ${method}, --require-quiesce: clean as it is, the hook's marker and the writer's file up to the instant`, async () => {
        const before = baseline();
        const freezes = await freezeCount();
        const from = guest.writerSeq('vda');
        const output = join(out, `${method}.qcow2`);
        const run = await qcowkit(['vm', 'snapshot', '--method', method, '--require-quiesce', NAME, output]);
        durations.set(method === 'overlay' ? 'overlay' : 'mirror --require-quiesce', run.ms);
        const to = guest.writerSeq('vda');
        expect(run.stderr).toBe('');
        expect(run.status).toBe(0);
        checkImage(output);
        expect(imageInfo(output)['backing-filename']).toBeUndefined();
        expectRootAt(output, 'qcow2', { from, to }, true, freezes + 1);
        expect(await freezeCount()).toBe(freezes + 1);
        await expectGuestBack(before, method);
      }, 180_000);
    }

    it('cold: the guest saved and started again; clean after the journal replay, the file up to the save', async () => {
      const before = baseline();
      const from = guest.writerSeq('vda');
      const output = join(out, 'cold.qcow2');
      const run = await qcowkit(['vm', 'snapshot', '--mode', 'cold', NAME, output]);
      durations.set('cold', run.ms);
      expect(run.stderr).toBe('');
      expect(run.status).toBe(0);
      const to = guest.writerSeq('vda');
      checkImage(output);
      expectRootAt(output, 'qcow2', { from, to }, false);
      await expectGuestBack(before, 'cold');
    }, 180_000);

    it('--all-disks --require-quiesce: both disks at one instant, a manifest, the marker', async () => {
      const before = baseline();
      const freezes = await freezeCount();
      const from = guest.writerSeq('vda');
      const run = await qcowkit(['vm', 'snapshot', '--all-disks', '--require-quiesce', NAME, out]);
      durations.set('all disks --require-quiesce', run.ms);
      const to = guest.writerSeq('vda');
      expect(run.stderr).toBe('');
      expect(run.status).toBe(0);
      expect(readdirSync(out).sort()).toEqual(['manifest.json', 'vda.qcow2', 'vdb.qcow2']);
      const manifest = JSON.parse(readFileSync(join(out, 'manifest.json'), 'utf8'));
      expect(manifest).toMatchObject({ domain: NAME, mode: 'live', method: 'overlay', quiesced: true });
      expect(manifest.disks).toEqual([
        { target: 'vda', source: guest.vda, format: 'qcow2', virtualSize: 512 * 1024 * 1024, output: 'vda.qcow2', outputFormat: 'qcow2' },
        { target: 'vdb', source: guest.vdb, format: 'qcow2', virtualSize: 64 * 1024 * 1024, output: 'vdb.qcow2', outputFormat: 'qcow2' },
      ]);
      for (const disk of ['vda', 'vdb']) checkImage(join(out, `${disk}.qcow2`));
      const rootLast = expectRootAt(join(out, 'vda.qcow2'), 'qcow2', { from, to }, true, freezes + 1);
      const data = readExt4(join(out, 'vdb.qcow2'), 'qcow2', [IN_IMAGE.vdb]);
      expect(data.cleanAsIs, data.fsckAsIs).toBe(true);
      const dataLines = writerLines(data.files.get(IN_IMAGE.vdb), 'vdb.qcow2');
      // One instant: the writer fsyncs line N on vda before it writes line N on vdb (and a freeze may come between).
      expect(rootLast - dataLines[dataLines.length - 1]!).toBeGreaterThanOrEqual(0);
      expect(rootLast - dataLines[dataLines.length - 1]!).toBeLessThanOrEqual(1);
      await expectGuestBack(before, 'all disks');
    }, 180_000);

    it('--all-disks, not quiesced, three times: the second disk never holds a line newer than the first', async () => {
      const before = baseline();
      const results: string[] = [];
      for (let round = 0; round < 3; round++) {
        for (const f of readdirSync(out)) rmSync(join(out, f));
        const run = await qcowkit(['vm', 'snapshot', '--all-disks', NAME, out]);
        expect(run.status, run.stderr).toBe(0);
        const root = readExt4(join(out, 'vda.qcow2'), 'qcow2', [IN_IMAGE.vda]);
        const data = readExt4(join(out, 'vdb.qcow2'), 'qcow2', [IN_IMAGE.vdb]);
        expect(root.cleanAfterReplay, root.fsckAfterReplay).toBe(true);
        expect(data.cleanAfterReplay, data.fsckAfterReplay).toBe(true);
        const rootLast = writerLines(root.files.get(IN_IMAGE.vda), 'vda').pop()!;
        const dataLast = writerLines(data.files.get(IN_IMAGE.vdb), 'vdb').pop()!;
        results.push(`vda ${rootLast}, vdb ${dataLast}`);
        // The writer fsyncs line N on vda before it writes line N on vdb: at one instant vdb is at N or N - 1.
        expect(dataLast, results.join('; ')).toBeLessThanOrEqual(rootLast);
        expect(rootLast - dataLast, results.join('; ')).toBeLessThanOrEqual(1);
      }
      process.stderr.write(`vm-linux-guest: all-disks ordering: ${results.join('; ')}\n`);
      await expectGuestBack(before, 'all disks, not quiesced');
    }, 300_000);
  });

  describe('failures on real libvirt leave the guest as it was', () => {
    /** A tmpfs of `size` (mount(8)): where space runs out on demand. */
    let full: string;
    beforeAll(() => {
      full = join(tmpdir(), `qcowkit-vm-full-${process.pid}`);
      mkdirSync(full, { recursive: true });
      const r = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'qcowkit-vm-full', full], { encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`cannot mount a small tmpfs for the no-space tests: ${r.stderr.trim()}`);
    });
    afterAll(() => {
      if (full === undefined) return;
      spawnSync('umount', [full]);
      rmSync(full, { recursive: true, force: true });
    });

    it.each([
      ['overlay: no space for the output', ['--method', 'overlay'], 'output'],
      ['mirror: no space for the output', ['--method', 'mirror'], 'output'],
      ['cold: no space for the output', ['--mode', 'cold'], 'output'],
      ['all disks: no space for the outputs', ['--all-disks'], 'output'],
      ['overlay: no space for the temporary overlay (the snapshot fails)', ['--method', 'overlay'], 'temp'],
      ['mirror: no space for the delta', ['--method', 'mirror'], 'temp'],
    ] as const)('%s', async (_name, flags, where) => {
      const before = baseline();
      const allDisks = (flags as readonly string[]).includes('--all-disks');
      const target = where === 'output' ? (allDisks ? full : join(full, 'x.qcow2')) : join(out, 'x.qcow2');
      // The temporary overlay or delta goes to the output's directory unless --temp-dir says otherwise.
      const run = await qcowkit(['vm', 'snapshot', ...flags, '--temp-dir', where === 'temp' ? full : out, NAME, target]);
      expect(run.status, run.stderr).toBe(1);
      // ENOSPC from our own writes, or libvirt's "failed to format image: …: No space left on device".
      expect(run.stderr).toMatch(/^qcowkit: .*(No space|ENOSPC)/i);
      expect(run.stderr.trim().split('\n').length).toBe(1);
      expect(readdirSync(full)).toEqual([]);
      await expectGuestBack(before, _name);
    }, 180_000);
  });

  describe('killed at every step, then vm recover', () => {
    interface FlowSpec {
      name: string;
      args: (output: string) => string[];
      steps: string[];
      /** Steps at which the guest writes to a temporary overlay (its writes must end up on its own disk). */
      onOverlay: string[];
    }
    const FLOWS: FlowSpec[] = [
      {
        name: 'overlay',
        args: (o) => ['--method', 'overlay', NAME, join(o, 'snap.qcow2')],
        steps: ['dumpxml', 'snapshot', 'convert', 'blockcommit', 'pivot', 'define', 'publish', 'remove-temporary', 'finish'],
        onOverlay: ['convert', 'blockcommit', 'pivot'],
      },
      {
        name: 'mirror --require-quiesce',
        args: (o) => ['--method', 'mirror', '--require-quiesce', NAME, join(o, 'snap.qcow2')],
        steps: ['dumpxml', 'create-delta', 'blockcopy', 'fsfreeze', 'blockjob-abort', 'fsthaw', 'convert', 'publish', 'remove-temporary', 'finish'],
        onOverlay: [],
      },
      {
        name: 'cold',
        args: (o) => ['--mode', 'cold', NAME, join(o, 'snap.qcow2')],
        steps: ['managedsave', 'convert', 'start', 'publish', 'finish'],
        onOverlay: [],
      },
      {
        // The overlay flow on every disk: its steps that differ from the single disk's (both disks on overlays,
        // the second disk's commit, the manifest); the fake-hypervisor tests kill it at every call.
        name: 'all disks --require-quiesce',
        args: (o) => ['--all-disks', '--require-quiesce', NAME, o],
        steps: ['snapshot', 'convert#2', 'blockcommit#2', 'pivot#2', 'publish', 'remove-temporary'],
        onOverlay: ['convert#2', 'blockcommit#2', 'pivot#2'],
      },
    ];

    /** After a kill: the guest's writes go on (where it was left); `vm recover`; the checks; (`again`) recover again. */
    async function recoverAndCheck(before: Baseline, what: string, onOverlay: boolean, again: boolean): Promise<void> {
      const written = { vda: 0, vdb: 0 };
      if (onOverlay) {
        // The guest goes on writing to the temporary overlay(s) while nobody looks after it.
        await sleep(1500);
        written.vda = guest.writerSeq('vda');
        written.vdb = guest.writerSeq('vdb');
      }
      const recover = await qcowkit(['vm', 'recover', NAME]);
      expect(recover.status, `${what}: ${recover.stderr}`).toBe(0);
      expect(recover.stderr, what).not.toMatch(/error/i);
      await expectGuestBack(before, what);
      if (onOverlay) {
        // What the guest wrote while on the overlay is on its own disks now.
        for (const [disk, image] of [['vda', guest.vda], ['vdb', guest.vdb]] as const) {
          const view = readExt4(image, 'qcow2', [IN_IMAGE[disk]], { fsck: false });
          const lines = writerLines(view.files.get(IN_IMAGE[disk]), `${what}: ${image}`);
          expect(lines[lines.length - 1], `${what}: ${disk}`).toBeGreaterThanOrEqual(written[disk] - 1);
        }
      }
      if (!again) return;
      const second = await qcowkit(['vm', 'recover', NAME]);
      expect(second.status, what).toBe(0);
      expect(second.stdout, what).toBe(`nothing to recover: domain ${NAME} has no leftovers of a qcowkit snapshot\n`);
    }

    function onTemporaryOverlay(): boolean {
      return ['vda', 'vdb'].some((t) => /\.qcowkit-overlay-/.test(guest.liveChain(t)[0] ?? ''));
    }

    for (const flow of FLOWS) {
      for (const step of flow.steps) {
        it(`${flow.name}: killed at ${step}`, async () => {
          const before = baseline();
          const run = await qcowkit(['vm', 'snapshot', ...flow.args(out)], { env: { QCOWKIT_TEST_KILL_AT: step } });
          expect(run.signal, `${step}: the run was to be killed there (${run.stderr})`).toBe('SIGKILL');
          const onOverlay = guest.state() === 'running' && onTemporaryOverlay();
          expect(onOverlay, `${step}: on a temporary overlay`).toBe(flow.onOverlay.includes(step));
          // Recovery is idempotent: checked once per flow here (and after every kill in recover.test.ts).
          await recoverAndCheck(before, `${flow.name} killed at ${step}`, onOverlay, step === flow.onOverlay[0]);
          // Outputs appear only when whole: a kill before the rename leaves none under the asked-for name.
          const published = ['remove-temporary', 'finish'].includes(step);
          const outputs = readdirSync(out).filter((f) => f.endsWith('.qcow2'));
          expect(outputs.length > 0, `${step}: outputs ${outputs.join(', ')}`).toBe(published);
          for (const f of outputs) checkImage(join(out, f));
        }, 180_000);
      }

      it(`${flow.name}: killed at a random moment`, async () => {
        // Anywhere in a whole run (as long as the last one took, or 8 s), node's start-up included; a run that
        // ended first is tried again with a shorter span, so that the kill lands inside one.
        let span = durations.get(flow.name) ?? 8000;
        for (let attempt = 0; attempt < 4; attempt++) {
          const before = baseline();
          const delay = 300 + Math.floor(Math.random() * span * 0.8);
          const run = await qcowkit(['vm', 'snapshot', ...flow.args(out)], { killAfterMs: delay });
          const what = `${flow.name} killed after ${delay} ms (${run.signal ?? `exit ${run.status}`})`;
          process.stderr.write(`vm-linux-guest: ${what}\n`);
          await recoverAndCheck(before, what, guest.state() === 'running' && onTemporaryOverlay(), true);
          if (run.signal === 'SIGKILL') return;
          for (const f of readdirSync(out)) rmSync(join(out, f), { recursive: true, force: true });
          span = Math.min(span, run.ms) * 0.7;
        }
        throw new Error(`${flow.name}: no run was killed before it ended`);
      }, 300_000);
    }

    it.each([
      ['overlay', ['--method', 'overlay'], 'blockcommit'],
      ['mirror (left frozen)', ['--method', 'mirror', '--require-quiesce'], 'blockjob-abort'],
      ['cold (left saved)', ['--mode', 'cold'], 'convert'],
    ] as const)('%s: a second vm snapshot after a kill recovers first and works', async (_name, flags, step) => {
      const before = baseline();
      const output = join(out, 'second.qcow2');
      const from = guest.writerSeq('vda');
      const killed = await qcowkit(['vm', 'snapshot', ...flags, NAME, output], { env: { QCOWKIT_TEST_KILL_AT: step } });
      expect(killed.signal).toBe('SIGKILL');
      const second = await qcowkit(['vm', 'snapshot', ...flags, NAME, output]);
      expect(second.status, second.stderr).toBe(0);
      expect(second.stderr).toMatch(new RegExp(`^qcowkit: ${NAME}: warning: recovered what a killed run left first: `));
      checkImage(output);
      expectRootAt(output, 'qcow2', { from, to: guest.writerSeq('vda') }, (flags as readonly string[]).includes('--require-quiesce'));
      rmSync(output);
      await expectGuestBack(before, _name);
    }, 180_000);

    it('vm recover with nothing to do says so and exits 0', async () => {
      const before = baseline();
      const run = await qcowkit(['vm', 'recover', NAME]);
      expect(run).toMatchObject({ status: 0, stderr: '', stdout: `nothing to recover: domain ${NAME} has no leftovers of a qcowkit snapshot\n` });
      await expectGuestBack(before, 'nothing to do');
    }, 60_000);
  });
});
