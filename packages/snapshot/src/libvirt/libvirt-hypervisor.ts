/** The Hypervisor interface over libvirt, by running `virsh -c URI …` (see virsh.ts). */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HypervisorError, isHypervisorError, messageOf } from '../errors.js';
import type { BlockCopyOptions, BlockJobInfo, DiskDefinition, DiskOnlySnapshotOptions, DomainInfo, DomainState, Hypervisor } from '../hypervisor.js';
import { parseDomainXml, type DomainDescription } from './domain-xml.js';
import { escapeDiskspecValue, execFileRunner, parseBlockJobRaw, parseColonFields, virshError, type VirshRunner } from './virsh.js';

export interface LibvirtHypervisorOptions {
  /** The libvirt connection URI (virsh -c); default qemu:///system. */
  uri?: string;
  /** How virsh is run; default execFile('virsh'). Tests pass a fake. */
  runner?: VirshRunner;
  /**
   * Pass --transient-job to blockcopy (default true): the copy then runs on a persistent domain without
   * undefining it. false forces nova's older path (undefine, copy, define again).
   */
  transientJob?: boolean;
  /** How long abortBlockJob waits for the job to disappear (ms, default 60 s). */
  jobTimeoutMs?: number;
}

const STATES: Record<string, DomainState> = {
  running: 'running',
  idle: 'running',
  blocked: 'running',
  paused: 'paused',
  'shut off': 'shutoff',
  'in shutdown': 'shutdown',
  crashed: 'crashed',
  pmsuspended: 'pmsuspended',
  'no state': 'nostate',
};

export class LibvirtHypervisor implements Hypervisor {
  readonly uri: string;
  private readonly run: VirshRunner;
  readonly transientJob: boolean;
  private readonly jobTimeoutMs: number;

  constructor(options: LibvirtHypervisorOptions = {}) {
    this.uri = options.uri ?? 'qemu:///system';
    this.run = options.runner ?? execFileRunner();
    this.transientJob = options.transientJob ?? true;
    this.jobTimeoutMs = options.jobTimeoutMs ?? 60_000;
  }

  /** Runs `virsh -c URI ARGS`; returns stdout, throws HypervisorError for a non-zero exit. */
  async virsh(args: readonly string[]): Promise<string> {
    const full = ['-c', this.uri, ...args];
    const result = await this.run(full);
    if (result.exitCode !== 0) throw virshError(args, result);
    return result.stdout;
  }

  private async description(domain: string, inactive: boolean): Promise<DomainDescription> {
    const xml = await this.dumpXml(domain, { inactive, securityInfo: false });
    try {
      return parseDomainXml(xml);
    } catch (error) {
      throw new HypervisorError('BAD_OUTPUT', `cannot read the XML of domain '${domain}': ${messageOf(error)}`, { cause: error });
    }
  }

  async domainInfo(domain: string): Promise<DomainInfo> {
    const fields = parseColonFields(await this.virsh(['dominfo', `--domain=${domain}`]));
    const stateText = fields.get('State');
    const state = stateText === undefined ? undefined : STATES[stateText];
    if (state === undefined) throw new HypervisorError('BAD_OUTPUT', `virsh dominfo: unknown state '${stateText ?? ''}' for domain '${domain}'`);
    const description = await this.description(domain, false);
    return {
      name: fields.get('Name') ?? domain,
      state,
      persistent: fields.get('Persistent') === 'yes',
      virtType: description.virtType,
      uuid: fields.get('UUID') ?? description.uuid,
      managedSave: fields.get('Managed save') === 'yes',
    };
  }

  async domainState(domain: string): Promise<DomainState> {
    // "running (booted)" with --reason; without it just the state.
    const text = (await this.virsh(['domstate', `--domain=${domain}`])).trim();
    const state = STATES[text];
    if (state === undefined) throw new HypervisorError('BAD_OUTPUT', `virsh domstate: unknown state '${text}' for domain '${domain}'`);
    return state;
  }

  async disks(domain: string, options: { inactive?: boolean } = {}): Promise<DiskDefinition[]> {
    return (await this.description(domain, options.inactive ?? false)).disks;
  }

  async listDomains(): Promise<string[]> {
    const out = await this.virsh(['list', '--all', '--name']);
    return out
      .split('\n')
      .map((line) => line.trim())
      .filter((line) => line !== '');
  }

  async suspend(domain: string): Promise<void> {
    await this.virsh(['suspend', `--domain=${domain}`]);
  }

  async resume(domain: string): Promise<void> {
    await this.virsh(['resume', `--domain=${domain}`]);
  }

  async managedSave(domain: string): Promise<void> {
    await this.virsh(['managedsave', `--domain=${domain}`]);
  }

  async start(domain: string, options: { paused: boolean }): Promise<void> {
    await this.virsh(['start', `--domain=${domain}`, ...(options.paused ? ['--paused'] : [])]);
  }

  async dumpXml(domain: string, options: { inactive: boolean; securityInfo: boolean }): Promise<string> {
    return this.virsh(['dumpxml', `--domain=${domain}`, ...(options.inactive ? ['--inactive'] : []), ...(options.securityInfo ? ['--security-info'] : [])]);
  }

  /**
   * virsh define reads a file. The XML may carry secrets (--security-info: VNC/SPICE passwords), so it goes
   * into a private directory (0700, file 0600) that is removed right after.
   */
  async define(xml: string): Promise<void> {
    const dir = await mkdtemp(join(tmpdir(), 'qcowkit-define-'));
    try {
      const file = join(dir, 'domain.xml');
      await writeFile(file, xml, { mode: 0o600 });
      await this.virsh(['define', `--file=${file}`]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }

  async undefine(domain: string): Promise<void> {
    // --keep-nvram: a UEFI guest's variable store must survive; it is defined again right after.
    await this.virsh(['undefine', `--domain=${domain}`, '--keep-nvram']);
  }

  async blockCopy(domain: string, target: string, destination: string, options: BlockCopyOptions): Promise<void> {
    if (options.transientJob && !this.transientJob) {
      throw new HypervisorError('UNSUPPORTED', 'blockcopy --transient-job is turned off for this connection (transientJob: false)');
    }
    await this.virsh([
      'blockcopy',
      `--domain=${domain}`,
      `--path=${target}`,
      `--dest=${destination}`,
      `--format=${options.format}`,
      ...(options.shallow ? ['--shallow'] : []),
      ...(options.reuseExternal ? ['--reuse-external'] : []),
      ...(options.transientJob ? ['--transient-job'] : []),
    ]);
    // Not `--wait`: a virsh left waiting by a caller that died would go on and act on its own; polling from
    // here leaves nothing behind but the job itself, which recovery can see.
    await this.waitBlockJobReady(domain, target);
  }

  async waitBlockJobReady(domain: string, target: string): Promise<void> {
    for (let delay = 50; ; delay = Math.min(delay * 2, 500)) {
      const disk = (await this.disks(domain)).find((d) => d.target === target);
      if (disk === undefined) throw new HypervisorError('FAILED', `domain '${domain}' has no disk ${target}`);
      if (disk.mirror?.ready) return;
      // The XML's <mirror> appears with the job; no job at all means it ended without becoming ready.
      if (disk.mirror === undefined && (await this.blockJob(domain, target)) === undefined) {
        throw new HypervisorError('BLOCK_JOB_FAILED', `the block job on ${domain}/${target} ended before it was ready`);
      }
      await new Promise((resolve) => setTimeout(resolve, delay));
    }
  }

  async pivotBlockJob(domain: string, target: string): Promise<void> {
    await this.virsh(['blockjob', `--domain=${domain}`, `--path=${target}`, '--pivot']);
  }

  async blockJob(domain: string, target: string): Promise<BlockJobInfo | undefined> {
    return parseBlockJobRaw(await this.virsh(['blockjob', `--domain=${domain}`, `--path=${target}`, '--raw']));
  }

  async abortBlockJob(domain: string, target: string): Promise<void> {
    try {
      await this.virsh(['blockjob', `--domain=${domain}`, `--path=${target}`, '--abort']);
    } catch (error) {
      if (!isHypervisorError(error, 'NO_BLOCK_JOB')) throw error;
    }
    // virsh's abort waits for the job to end; check anyway, QEMU may still be finishing it.
    const deadline = Date.now() + this.jobTimeoutMs;
    while ((await this.blockJob(domain, target)) !== undefined) {
      if (Date.now() > deadline) throw new HypervisorError('TIMEOUT', `the block job on ${domain}/${target} did not end within ${this.jobTimeoutMs} ms of its abort`);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }

  async snapshotDiskOnly(domain: string, options: DiskOnlySnapshotOptions): Promise<void> {
    await this.virsh([
      'snapshot-create-as',
      `--domain=${domain}`,
      '--disk-only',
      '--no-metadata',
      '--atomic',
      ...(options.quiesce ? ['--quiesce'] : []),
      ...options.overlays.map(({ target, overlay }) => `--diskspec=${target},snapshot=external,file=${escapeDiskspecValue(overlay)}`),
      ...options.otherTargets.map((other) => `--diskspec=${other},snapshot=no`),
    ]);
  }

  async blockCommitActive(domain: string, target: string): Promise<void> {
    // --shallow: into the image right below the top, not into the bottom of the chain (virsh's default base).
    // No --pivot --wait, for the reason given in blockCopy: the caller pivots.
    await this.virsh(['blockcommit', `--domain=${domain}`, `--path=${target}`, '--active', '--shallow']);
    await this.waitBlockJobReady(domain, target);
  }

  async fsFreeze(domain: string): Promise<void> {
    await this.virsh(['domfsfreeze', `--domain=${domain}`]);
  }

  async fsThaw(domain: string): Promise<void> {
    await this.virsh(['domfsthaw', `--domain=${domain}`]);
  }

  async fsFrozen(domain: string): Promise<boolean> {
    const out = await this.virsh(['qemu-agent-command', `--domain=${domain}`, '{"execute":"guest-fsfreeze-status"}']);
    let status: unknown;
    try {
      status = (JSON.parse(out) as { return?: unknown }).return;
    } catch (error) {
      throw new HypervisorError('BAD_OUTPUT', `guest-fsfreeze-status: cannot read '${out.trim()}'`, { cause: error });
    }
    if (status !== 'frozen' && status !== 'thawed') throw new HypervisorError('BAD_OUTPUT', `guest-fsfreeze-status: unknown status '${String(status)}'`);
    return status === 'frozen';
  }

  async monitorCommand(domain: string, command: string, options: { hmp: boolean }): Promise<string> {
    return this.virsh(['qemu-monitor-command', `--domain=${domain}`, ...(options.hmp ? ['--hmp'] : []), '--', command]);
  }
}
