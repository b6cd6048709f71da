/**
 * A fake Hypervisor for the flow tests: libvirt's behaviour as far as the flows can see it, on real image files
 * (qemu-img does what QEMU would do to them), with a failure injectable into every call — before it acts, or
 * after (the call did its work and then reported an error, as a virsh that timed out can).
 *
 * Just over 400 lines: one method per Hypervisor call, each a few lines, all over the same domain state.
 */
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync } from 'node:fs';
import { HypervisorError, type HypervisorErrorCode } from '../errors.js';
import type { BlockCopyOptions, BlockJobInfo, BlockMirror, DiskDefinition, DiskLayer, DiskOnlySnapshotOptions, DomainInfo, DomainState, Hypervisor } from '../hypervisor.js';
import { qemuImg, qemuIo } from './images.js';

export type FakeCall = Exclude<keyof Hypervisor, 'uri'>;

export interface FakeDisk {
  target: string;
  device?: string;
  chain: DiskLayer[];
}

export interface FakeDomainSpec {
  name: string;
  state: 'running' | 'paused' | 'shutoff';
  persistent?: boolean;
  virtType?: string;
  disks: FakeDisk[];
  /** A guest agent that answers (default: none configured). */
  agent?: boolean;
}

interface FakeDomain {
  name: string;
  state: DomainState;
  persistent: boolean;
  virtType: string;
  disks: FakeDisk[];
  agent: boolean;
  frozen: boolean;
  /** The persistent definition, opaque: compared as a string by the tests. */
  persistentXml: string;
  managedSave: { state: DomainState } | undefined;
  /** The block job (one at a time, as the flows use them). An active commit names the base it merges into. */
  job: { target: string; type: string; destination?: string; base?: string } | undefined;
  uuid: string;
}

interface Failure {
  error: HypervisorError;
  /** Act first, then throw. */
  after: boolean;
  /** How many calls fail (default 1). */
  times: number;
  /** How many calls succeed first (default 0). */
  skip: number;
}

export class FakeHypervisor implements Hypervisor {
  readonly uri = 'fake:///system';
  readonly domains = new Map<string, FakeDomain>();
  readonly calls: string[] = [];
  private readonly failures = new Map<FakeCall, Failure>();
  private hang: { call: FakeCall; after: boolean; skip: number } | undefined;
  /** The overlays external snapshots created. */
  private readonly overlays = new Set<string>();
  /** Whether blockcopy takes --transient-job (libvirt ≥ 1.2.19); without it a persistent domain must be undefined. */
  transientJobSupported = true;

  addDomain(spec: FakeDomainSpec): void {
    this.domains.set(spec.name, {
      name: spec.name,
      state: spec.state,
      persistent: spec.persistent ?? true,
      virtType: spec.virtType ?? 'kvm',
      disks: spec.disks.map((d) => ({ ...d, chain: d.chain.map((l) => ({ ...l })) })),
      agent: spec.agent ?? false,
      frozen: false,
      persistentXml: `<domain type='${spec.virtType ?? 'kvm'}'><name>${spec.name}</name><!-- definition 1 --></domain>`,
      managedSave: undefined,
      job: undefined,
      uuid: fakeUuid(spec.name),
    });
  }

  /** The next `times` calls of `call` fail with `code` (before acting, or after acting with `after`). */
  failOn(call: FakeCall, options: { code?: HypervisorErrorCode; message?: string; after?: boolean; times?: number; skip?: number } = {}): HypervisorError {
    const error = new HypervisorError(options.code ?? 'FAILED', options.message ?? `injected failure of ${call}`);
    this.failures.set(call, { error, after: options.after ?? false, times: options.times ?? 1, skip: options.skip ?? 0 });
    return error;
  }

  /**
   * The next call of `call` never returns (after acting, with `after`): the caller is as good as killed there,
   * with libvirt left as that call left it. The crash tests then run recovery on the same fake.
   */
  hangOn(call: FakeCall, options: { after?: boolean; skip?: number } = {}): void {
    this.hang = { call, after: options.after ?? false, skip: options.skip ?? 0 };
  }

  /** Whether a call is hanging now (the simulated kill happened). */
  hung = false;

  /** Calls of `call` succeed again. */
  clearFailure(call: FakeCall): void {
    this.failures.delete(call);
  }

  domain(name: string): FakeDomain {
    const d = this.domains.get(name);
    if (d === undefined) throw new HypervisorError('NO_DOMAIN', `Domain not found: no domain with matching name '${name}'`);
    return d;
  }

  /** A snapshot of everything the tests compare before and after a flow. */
  observe(name: string): { state: DomainState; persistent: boolean; persistentXml: string; frozen: boolean; job: unknown; chains: string[][]; managedSave: boolean } {
    const d = this.domain(name);
    return {
      state: d.state,
      persistent: d.persistent,
      persistentXml: d.persistentXml,
      frozen: d.frozen,
      job: d.job,
      chains: d.disks.map((disk) => disk.chain.map((l) => l.path ?? '')),
      managedSave: d.managedSave !== undefined,
    };
  }

  /** A guest write to the disk's active image, mirrored into a running copy or a ready active commit as QEMU does. */
  guestWrite(name: string, target: string, pattern: number, offset: number, length: number): void {
    const d = this.domain(name);
    if (d.state !== 'running') throw new Error(`guest ${name} is ${d.state}: it cannot write`);
    if (d.frozen) throw new Error(`guest ${name} is frozen: it cannot write`);
    const disk = this.disk(d, target);
    qemuIo(disk.chain[0]!.path!, [`write -q -P ${pattern} ${offset} ${length}`], { format: disk.chain[0]!.format! });
    if (d.job?.type === 'Block Copy' && d.job.target === target) qemuIo(d.job.destination!, [`write -q -P ${pattern} ${offset} ${length}`]);
    if (d.job?.type === 'Active Block Commit' && d.job.target === target) qemuIo(disk.chain[1]!.path!, [`write -q -P ${pattern} ${offset} ${length}`], { format: disk.chain[1]!.format! });
  }

  private async call<T>(name: FakeCall, action: () => T | Promise<T>): Promise<T> {
    this.calls.push(name);
    if (this.hang?.call === name && this.hang.skip-- === 0) {
      const { after } = this.hang;
      this.hang = undefined;
      if (after) {
        try {
          await action();
        } catch {
          // It refused: the run dies all the same, before it learns.
        }
      }
      this.hung = true;
      return new Promise<T>(() => {});
    }
    const failure = this.failures.get(name);
    if (failure !== undefined && failure.skip > 0) failure.skip--;
    else if (failure !== undefined) {
      if (--failure.times <= 0) this.failures.delete(name);
      if (failure.after) await action();
      throw failure.error;
    }
    return action();
  }

  private disk(d: FakeDomain, target: string): FakeDisk {
    const disk = d.disks.find((x) => x.target === target);
    if (disk === undefined) throw new HypervisorError('FAILED', `invalid argument: disk '${target}' not found in domain`);
    return disk;
  }

  private requireActive(d: FakeDomain): void {
    if (d.state !== 'running' && d.state !== 'paused') throw new HypervisorError('OPERATION_INVALID', 'Requested operation is not valid: domain is not running');
  }

  domainInfo(name: string): Promise<DomainInfo> {
    return this.call('domainInfo', () => {
      const d = this.domain(name);
      return { name: d.name, state: d.state, persistent: d.persistent, virtType: d.virtType, uuid: d.uuid, managedSave: d.managedSave !== undefined };
    });
  }

  domainState(name: string): Promise<DomainState> {
    return this.call('domainState', () => this.domain(name).state);
  }

  disks(name: string, options: { inactive?: boolean } = {}): Promise<DiskDefinition[]> {
    return this.call('disks', () => {
      const d = this.domain(name);
      const live = !options.inactive && (d.state === 'running' || d.state === 'paused');
      return d.disks.map((disk) => ({
        ...(live && d.job?.target === disk.target ? { mirror: mirrorOf(d.job) } : {}),
        target: disk.target,
        bus: 'virtio',
        device: disk.device ?? 'disk',
        readonly: false,
        alias: live ? `virtio-${disk.target}` : undefined,
        // Like libvirt: a running domain's XML lists the whole chain; a definition only the top image.
        chain: live ? disk.chain.map((l) => ({ ...l })) : [{ ...disk.chain[0]! }],
        chainComplete: live,
      }));
    });
  }

  listDomains(): Promise<string[]> {
    return this.call('listDomains', () => [...this.domains.keys()]);
  }

  suspend(name: string): Promise<void> {
    return this.call('suspend', () => {
      const d = this.domain(name);
      if (d.state !== 'running') throw new HypervisorError('OPERATION_INVALID', 'Requested operation is not valid: domain is not running');
      d.state = 'paused';
    });
  }

  resume(name: string): Promise<void> {
    return this.call('resume', () => {
      const d = this.domain(name);
      if (d.state !== 'paused') throw new HypervisorError('OPERATION_INVALID', 'Requested operation is not valid: domain is not paused');
      d.state = 'running';
    });
  }

  managedSave(name: string): Promise<void> {
    return this.call('managedSave', () => {
      const d = this.domain(name);
      this.requireActive(d);
      if (!d.persistent) throw new HypervisorError('OPERATION_INVALID', 'Requested operation is not valid: cannot do managed save for transient domain');
      if (d.job !== undefined) throw new HypervisorError('OPERATION_INVALID', 'Requested operation is not valid: domain has active block job');
      d.managedSave = { state: d.state };
      d.state = 'shutoff';
    });
  }

  start(name: string, options: { paused: boolean }): Promise<void> {
    return this.call('start', () => {
      const d = this.domain(name);
      if (d.state !== 'shutoff') throw new HypervisorError('OPERATION_INVALID', 'Requested operation is not valid: domain is already running');
      d.state = options.paused ? 'paused' : (d.managedSave?.state ?? 'running');
      d.managedSave = undefined;
    });
  }

  dumpXml(name: string, options: { inactive: boolean; securityInfo: boolean }): Promise<string> {
    return this.call('dumpXml', () => {
      const d = this.domain(name);
      if (options.inactive && !d.persistent) throw new HypervisorError('OPERATION_INVALID', 'Requested operation is not valid: domain is transient');
      return options.inactive ? d.persistentXml : `<domain type='${d.virtType}' id='1'><name>${d.name}</name></domain>`;
    });
  }

  define(xml: string): Promise<void> {
    return this.call('define', () => {
      const name = /<name>(.*?)<\/name>/.exec(xml)?.[1];
      const d = this.domain(name ?? '');
      d.persistent = true;
      d.persistentXml = xml;
      // The definition names each external snapshot's overlay (<!-- on PATH -->): a shut-off domain defined
      // without it is back on the image below.
      if (d.state === 'shutoff') {
        for (const disk of d.disks) {
          while (disk.chain.length > 1 && this.overlays.has(disk.chain[0]!.path!) && !xml.includes(`<!-- on ${disk.chain[0]!.path!} -->`)) disk.chain.shift();
        }
      }
    });
  }

  undefine(name: string): Promise<void> {
    return this.call('undefine', () => {
      const d = this.domain(name);
      if (d.state === 'shutoff') this.domains.delete(name);
      else {
        d.persistent = false;
        d.persistentXml = '';
      }
    });
  }

  blockCopy(name: string, target: string, destination: string, options: BlockCopyOptions): Promise<void> {
    return this.call('blockCopy', () => {
      const d = this.domain(name);
      this.requireActive(d);
      if (options.transientJob && !this.transientJobSupported) throw new HypervisorError('UNSUPPORTED', "command 'blockcopy' doesn't support option --transient-job");
      if (d.persistent && !options.transientJob) throw new HypervisorError('OPERATION_INVALID', 'Requested operation is not valid: domain is not transient');
      if (d.job !== undefined) throw new HypervisorError('OPERATION_INVALID', `Requested operation is not valid: disk '${target}' already in active block job`);
      if (!options.reuseExternal || !existsSync(destination)) throw new HypervisorError('FAILED', 'the fake only copies into an existing destination');
      const disk = this.disk(d, target);
      const top = disk.chain[0]!;
      const backing = disk.chain[1];
      // The shallow copy of the top image over the destination's backing file (the disk's own backing file).
      if (backing === undefined) qemuImg('convert', '-U', '-f', top.format!, '-O', 'qcow2', top.path!, destination);
      else {
        copyFileSync(top.path!, destination);
        qemuImg('rebase', '-U', '-u', '-f', 'qcow2', '-b', backing.path!, '-F', backing.format!, destination);
      }
      d.job = { target, type: 'Block Copy', destination };
    });
  }

  blockJob(name: string, target: string): Promise<BlockJobInfo | undefined> {
    return this.call('blockJob', () => {
      const d = this.domain(name);
      return d.job?.target === target ? { type: d.job.type, cur: 1, end: 1, bandwidth: 0 } : undefined;
    });
  }

  /** Ends the job without pivot: after an active commit, the guest stays on the overlay. */
  abortBlockJob(name: string, target: string): Promise<void> {
    return this.call('abortBlockJob', () => {
      const d = this.domain(name);
      if (d.job?.target === target) d.job = undefined;
    });
  }

  snapshotDiskOnly(name: string, options: DiskOnlySnapshotOptions): Promise<void> {
    return this.call('snapshotDiskOnly', () => {
      const d = this.domain(name);
      this.requireActive(d);
      if (options.quiesce && !d.agent) throw new HypervisorError('AGENT_UNAVAILABLE', 'argument unsupported: QEMU guest agent is not configured');
      const targets = options.overlays.map((o) => o.target);
      const others = d.disks.filter((x) => !targets.includes(x.target)).map((x) => x.target);
      if (others.some((t) => !options.otherTargets.includes(t))) throw new HypervisorError('FAILED', 'every disk must be named: with an overlay or snapshot=no');
      // One transaction: every check before any change.
      for (const { target, overlay } of options.overlays) {
        this.disk(d, target);
        if (existsSync(overlay)) throw new HypervisorError('FAILED', `external snapshot file for disk ${target} already exists`);
      }
      for (const { target, overlay } of options.overlays) {
        const disk = this.disk(d, target);
        const top = disk.chain[0]!;
        qemuImg('create', '-q', '-f', 'qcow2', '-b', top.path!, '-F', top.format!, overlay);
        disk.chain.unshift({ type: 'file', path: overlay, format: 'qcow2' });
        this.overlays.add(overlay);
        if (d.persistent) d.persistentXml = d.persistentXml.replace('</domain>', `<!-- on ${overlay} --></domain>`);
      }
    });
  }

  /** Starts the active commit and brings it to ready: the overlay's data is in the image below, new writes go to both. */
  blockCommitActive(name: string, target: string): Promise<void> {
    return this.call('blockCommitActive', () => {
      const d = this.domain(name);
      this.requireActive(d);
      const disk = this.disk(d, target);
      if (disk.chain.length < 2) throw new HypervisorError('FAILED', 'invalid argument: top has no backing file');
      if (d.job !== undefined) throw new HypervisorError('OPERATION_INVALID', `Requested operation is not valid: disk '${target}' already in active block job`);
      qemuImg('commit', '-q', '-d', '-f', 'qcow2', disk.chain[0]!.path!);
      d.job = { target, type: 'Active Block Commit', base: disk.chain[1]!.path! };
    });
  }

  pivotBlockJob(name: string, target: string): Promise<void> {
    return this.call('pivotBlockJob', () => {
      const d = this.domain(name);
      if (d.job?.target !== target) throw new HypervisorError('NO_BLOCK_JOB', `invalid argument: disk '${target}' does not have an active block job`);
      if (d.job.type !== 'Active Block Commit') throw new HypervisorError('FAILED', 'the fake pivots active commits only');
      const disk = this.disk(d, target);
      const overlay = disk.chain.shift()!;
      d.job = undefined;
      // libvirt rewrites the persistent definition at the pivot, with its own formatting.
      if (d.persistent) d.persistentXml = d.persistentXml.replace(`<!-- on ${overlay.path!} -->`, '<!-- pivoted -->');
    });
  }

  waitBlockJobReady(name: string, target: string): Promise<void> {
    return this.call('waitBlockJobReady', () => {
      if (this.domain(name).job?.target !== target) throw new HypervisorError('BLOCK_JOB_FAILED', `the block job on ${name}/${target} ended before it was ready`);
    });
  }

  fsFreeze(name: string): Promise<void> {
    return this.call('fsFreeze', () => {
      const d = this.domain(name);
      if (!d.agent) throw new HypervisorError('AGENT_UNAVAILABLE', 'argument unsupported: QEMU guest agent is not configured');
      d.frozen = true;
    });
  }

  fsThaw(name: string): Promise<void> {
    return this.call('fsThaw', () => {
      const d = this.domain(name);
      if (!d.agent) throw new HypervisorError('AGENT_UNAVAILABLE', 'argument unsupported: QEMU guest agent is not configured');
      d.frozen = false;
    });
  }

  fsFrozen(name: string): Promise<boolean> {
    return this.call('fsFrozen', () => {
      const d = this.domain(name);
      if (!d.agent) throw new HypervisorError('AGENT_UNAVAILABLE', 'argument unsupported: QEMU guest agent is not configured');
      return d.frozen;
    });
  }

  monitorCommand(): Promise<string> {
    return this.call('monitorCommand', () => {
      throw new HypervisorError('UNSUPPORTED', 'the fake has no QEMU monitor');
    });
  }
}

/** A stable UUID for a fake domain's name. */
function fakeUuid(name: string): string {
  const hex = createHash('sha256').update(name).digest('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20, 32)}`;
}

/** The <mirror> libvirt shows for a job (the fake's jobs are ready at once). */
function mirrorOf(job: { type: string; destination?: string; base?: string }): BlockMirror {
  if (job.type === 'Block Copy') return { job: 'copy', path: job.destination, ready: true };
  if (job.type === 'Active Block Commit') return { job: 'active-commit', path: job.base, ready: true };
  return { job: job.type.toLowerCase(), path: undefined, ready: false };
}
