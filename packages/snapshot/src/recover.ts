/**
 * recoverDomain: brings a guest back after a snapshot run that was killed (SIGKILL, OOM, a lost session, a
 * reboot of the management host), from the run's intent log and from what libvirt shows. What it does is decided
 * by what is there now, not by the step the log names — a step may have happened or not when the run died:
 *
 * - a block copy job into a qcowkit delta (the mirror flow's): aborted, without pivot; the guest stays on its disk;
 * - a disk running on a qcowkit temporary overlay: merged back (active commit, shallow, pivot) so no write the
 *   guest made meanwhile is lost; an active commit the run had started is waited for and pivoted;
 *   a shut-off guest defined on such an overlay: the overlay is committed into the image below by the engine and
 *   the saved definition defined again;
 * - the domain left transient by the mirror flow's undefine, or its definition rewritten by an external snapshot:
 *   the saved persistent definition is defined again;
 * - file systems the mirror flow froze: thawed;
 * - a guest the cold flow saved (managedsave): started again, paused if it was paused;
 * - the run's temporary files (overlays, deltas, partial outputs): removed once nothing uses them.
 * Outputs already renamed into place are whole and kept. The intent log is removed last, only when all of that
 * is done. Idempotent: a second run finds nothing to do. Without a log, only what libvirt shows is recovered (a
 * qcowkit overlay or copy job, recognised by its file name); a managed save image is then left alone, since
 * nothing says qcowkit made it.
 */
import { readdir, rm, stat } from 'node:fs/promises';
import { commitImage, type ReferenceGate } from '@qcowkit/qcow2/engine';
import { nodeHostFiles } from '@qcowkit/qcow2/node';
import { SnapshotError, isHypervisorError, messageOf } from './errors.js';
import type { DiskDefinition, DomainInfo, Hypervisor } from './hypervisor.js';
import { samePath } from './flows/context.js';
import { waitForCallsInFlight } from './intent/in-flight.js';
import { busyError, defaultStateDir, intentLogPath, readIntent, removeIntent, removeStaleIntentTemporaries, type IntentRecord } from './intent/intent-log.js';
import { ownerStatus } from './intent/owner.js';
import { temporaryKind } from './intent/temporaries.js';

export interface RecoverOptions {
  /** Where intent logs live (default $XDG_STATE_HOME/qcowkit/vm). */
  stateDir?: string;
  /** Each action as it is taken, one line. */
  onAction?: (action: string) => void;
  /** How long to wait for virsh calls a killed run left running (ms, default 60 s). */
  inFlightTimeoutMs?: number;
}

export interface RecoveryReport {
  domain: string;
  /** What was done, in order. */
  actions: string[];
  /** What was found and left alone, and why. */
  notes: string[];
  /** The killed run's intent log, when there was one (it is removed now). */
  intent: IntentRecord | undefined;
  /** Outputs of the killed run that were complete and are kept. */
  keptOutputs: string[];
  /** Nothing was found to recover. */
  nothingToDo: boolean;
}

/** A qcowkit leftover libvirt shows on a domain, without reading any intent log. */
export interface Leftover {
  target: string;
  kind: 'overlay' | 'copy-job' | 'inactive-overlay';
  path: string;
}

/** qcowkit temporaries that libvirt shows: a disk on a qcowkit overlay, a copy job into a qcowkit delta. */
export function visibleLeftovers(live: readonly DiskDefinition[], inactive: readonly DiskDefinition[]): Leftover[] {
  const out: Leftover[] = [];
  for (const disk of live) {
    const top = disk.chain[0]?.path;
    if (top !== undefined && temporaryKind(top) === 'overlay') out.push({ target: disk.target, kind: 'overlay', path: top });
    if (disk.mirror?.job === 'copy' && temporaryKind(disk.mirror.path) === 'delta') out.push({ target: disk.target, kind: 'copy-job', path: disk.mirror.path! });
  }
  for (const disk of inactive) {
    const top = disk.chain[0]?.path;
    if (top !== undefined && temporaryKind(top) === 'overlay' && !out.some((l) => l.path === top)) out.push({ target: disk.target, kind: 'inactive-overlay', path: top });
  }
  return out;
}

/** The domain's leftovers of a killed run, if any: its intent log (with a dead owner) or what libvirt shows. */
export async function findLeftovers(hypervisor: Hypervisor, info: DomainInfo, stateDir: string): Promise<{ intent: IntentRecord | undefined; visible: Leftover[] }> {
  const intent = await readIntent(stateDir, info.uuid);
  const active = info.state === 'running' || info.state === 'paused';
  const live = active ? await hypervisor.disks(info.name) : [];
  const inactive = info.persistent && !active ? await hypervisor.disks(info.name, { inactive: true }) : [];
  return { intent, visible: visibleLeftovers(live, inactive) };
}

class Recovery {
  readonly report: RecoveryReport;
  /** Temporary files to remove once nothing uses them. */
  private readonly temporaries = new Set<string>();
  private definedAgain = false;
  private thawed = false;

  constructor(
    private readonly hypervisor: Hypervisor,
    private readonly domain: string,
    private readonly record: IntentRecord | undefined,
    private readonly onAction: (action: string) => void,
  ) {
    this.report = { domain, actions: [], notes: [], intent: record, keptOutputs: [], nothingToDo: false };
    for (const disk of record?.disks ?? []) {
      if (disk.overlay !== undefined) this.temporaries.add(disk.overlay);
      if (disk.delta !== undefined) this.temporaries.add(disk.delta);
    }
    for (const output of record?.outputs ?? []) this.temporaries.add(output.partial);
  }

  private act(action: string): void {
    this.report.actions.push(action);
    this.onAction(action);
  }

  private note(note: string): void {
    if (!this.report.notes.includes(note)) this.report.notes.push(note);
  }

  private async isOurs(path: string | undefined, kind: 'overlay' | 'delta'): Promise<boolean> {
    if (path === undefined) return false;
    if (temporaryKind(path) === kind) return true;
    for (const disk of this.record?.disks ?? []) {
      const known = kind === 'overlay' ? disk.overlay : disk.delta;
      if (known !== undefined && (await samePath(known, path))) return true;
    }
    return false;
  }

  /** The disk's image before the run, as the log recorded it. */
  private originalOf(target: string): string | undefined {
    return this.record?.disks.find((d) => d.target === target)?.path;
  }

  /** One pass over the domain as it is now; returns whether it changed anything. */
  async pass(): Promise<boolean> {
    const { hypervisor, domain, record } = this;
    const info = await hypervisor.domainInfo(domain);
    const active = info.state === 'running' || info.state === 'paused';
    let changed = false;
    if (active) {
      for (const disk of await hypervisor.disks(domain)) changed = (await this.liveDisk(disk)) || changed;
      if (record?.mayBeFrozen && info.state === 'running' && !this.thawed) changed = (await this.thaw()) || changed;
    } else if (info.persistent) {
      for (const disk of await hypervisor.disks(domain, { inactive: true })) changed = (await this.inactiveDisk(disk)) || changed;
    }
    if (!active && record?.mayBeSaved && info.managedSave && (record.stateBefore === 'running' || record.stateBefore === 'paused')) {
      await hypervisor.start(domain, { paused: record.stateBefore === 'paused' });
      this.act(`started domain ${domain} again from its managed save image${record.stateBefore === 'paused' ? ' (paused, as it was)' : ''}`);
      changed = true;
    }
    if (record?.persistent && record.persistentXml !== undefined && !this.definedAgain) {
      const now = await hypervisor.domainInfo(domain);
      const onOverlay = visibleLeftovers(now.state === 'running' || now.state === 'paused' ? await hypervisor.disks(domain) : [], []).some((l) => l.kind === 'overlay');
      if (!now.persistent) {
        await hypervisor.define(record.persistentXml);
        this.definedAgain = true;
        this.act(`defined domain ${domain} again from its saved definition (the killed run had left it transient)`);
        changed = true;
      } else if (record.definitionChanged && !onOverlay) {
        const current = await hypervisor.dumpXml(domain, { inactive: true, securityInfo: true });
        this.definedAgain = true;
        if (current !== record.persistentXml) {
          await hypervisor.define(record.persistentXml);
          this.act(`put back the persistent definition of domain ${domain} saved before the snapshot`);
          changed = true;
        }
      }
    }
    return changed;
  }

  private async liveDisk(disk: DiskDefinition): Promise<boolean> {
    const { hypervisor, domain } = this;
    const top = disk.chain[0]?.path;
    const onOverlay = await this.isOurs(top, 'overlay');
    const mirror = disk.mirror;
    if (mirror !== undefined) {
      if (mirror.job === 'copy' && (await this.isOurs(mirror.path, 'delta'))) {
        await hypervisor.abortBlockJob(domain, disk.target);
        this.temporaries.add(mirror.path!);
        this.act(`aborted the block copy of ${domain}/${disk.target} into ${mirror.path} (the guest stays on its disk)`);
        return true;
      }
      if (mirror.job === 'active-commit' && onOverlay) {
        await hypervisor.waitBlockJobReady(domain, disk.target);
        await hypervisor.pivotBlockJob(domain, disk.target);
        this.temporaries.add(top!);
        this.act(`completed the merge of ${top} into ${mirror.path ?? 'the image below'} (pivot): ${domain}/${disk.target} writes to its own disk again`);
        return true;
      }
      this.note(`a '${mirror.job}' block job runs on ${domain}/${disk.target}: not qcowkit's, left alone`);
      return false;
    }
    if (!onOverlay) return false;
    // No job: the run died before its commit, or between the commit and its pivot (a job that ended then).
    await hypervisor.blockCommitActive(domain, disk.target);
    await hypervisor.pivotBlockJob(domain, disk.target);
    this.temporaries.add(top!);
    this.act(`merged the temporary overlay ${top} back into ${disk.chain[1]?.path ?? 'the image below'} (active commit, pivot): no guest write is lost`);
    return true;
  }

  /** A shut-off guest defined on a qcowkit overlay: commit it offline, then define the saved definition. */
  private async inactiveDisk(disk: DiskDefinition): Promise<boolean> {
    const top = disk.chain[0]?.path;
    if (!(await this.isOurs(top, 'overlay'))) return false;
    const original = this.originalOf(disk.target);
    const xml = this.record?.persistentXml;
    if (original === undefined || xml === undefined) {
      this.note(
        `domain ${this.domain} is shut off and its disk ${disk.target} is defined on the temporary overlay ${top}, but no intent log says what it was before: start the guest and run vm recover again (the overlay is then merged live)`,
      );
      return false;
    }
    let first = true;
    const gate: ReferenceGate = async (reference) => {
      if (reference.kind !== 'backing') throw new SnapshotError('CHAIN_MISMATCH', `${reference.from}: names a data file '${reference.name}'; not committed`);
      if (first && !(await samePath(reference.resolved, original))) {
        throw new SnapshotError('CHAIN_MISMATCH', `${top}: its backing file is '${reference.resolved}', but the intent log says the disk was ${original}; not committed`);
      }
      first = false;
    };
    await commitImage(top!, { hostFiles: nodeHostFiles, format: 'qcow2', drop: true, gate });
    await this.hypervisor.define(xml);
    this.definedAgain = true;
    this.temporaries.add(top!);
    this.act(`merged the temporary overlay ${top} into ${original} (the guest is shut off) and defined domain ${this.domain} on its own disk again`);
    return true;
  }

  private async thaw(): Promise<boolean> {
    try {
      if (!(await this.hypervisor.fsFrozen(this.domain))) return false;
      await this.hypervisor.fsThaw(this.domain);
      this.thawed = true;
      this.act(`thawed the file systems of domain ${this.domain}`);
      return true;
    } catch (error) {
      if (isHypervisorError(error, 'AGENT_UNAVAILABLE')) {
        this.note(`the guest agent of ${this.domain} does not answer: cannot tell whether its file systems are still frozen`);
        return false;
      }
      throw error;
    }
  }

  /** What still needs recovering now; empty when the guest is back. */
  async remaining(): Promise<string[]> {
    const { hypervisor, domain, record } = this;
    const info = await hypervisor.domainInfo(domain);
    const active = info.state === 'running' || info.state === 'paused';
    const left: string[] = [];
    const live = active ? await hypervisor.disks(domain) : [];
    const inactive = info.persistent && !active ? await hypervisor.disks(domain, { inactive: true }) : [];
    for (const disk of live) {
      if (await this.isOurs(disk.chain[0]?.path, 'overlay')) left.push(`${disk.target} still writes to the temporary overlay ${disk.chain[0]!.path}`);
      if (disk.mirror?.job === 'copy' && (await this.isOurs(disk.mirror.path, 'delta'))) left.push(`a block copy of ${disk.target} into ${disk.mirror.path} still runs`);
    }
    for (const disk of inactive) {
      if (await this.isOurs(disk.chain[0]?.path, 'overlay')) left.push(`${disk.target} is defined on the temporary overlay ${disk.chain[0]!.path}`);
    }
    if (record?.mayBeSaved && !active && info.managedSave && (record.stateBefore === 'running' || record.stateBefore === 'paused')) left.push('the guest is still saved (managedsave)');
    if (record?.persistent && !info.persistent) left.push('the domain is still transient');
    return left;
  }

  /** Removes the temporary files nothing uses any more; keeps (and notes) the others. */
  async removeTemporaries(): Promise<void> {
    const { hypervisor, domain } = this;
    // An output whose partial file is gone was renamed into place: it is whole (it was flushed first).
    for (const output of this.record?.outputs ?? []) {
      if (['publish', 'remove-temporary', 'finish'].includes(this.record!.step) && !(await exists(output.partial)) && (await exists(output.path))) {
        this.report.keptOutputs.push(output.path);
      }
    }
    const info = await hypervisor.domainInfo(domain);
    const active = info.state === 'running' || info.state === 'paused';
    const inUse: string[] = [];
    for (const disk of [...(active ? await hypervisor.disks(domain) : []), ...(info.persistent ? await hypervisor.disks(domain, { inactive: true }) : [])]) {
      for (const layer of disk.chain) if (layer.path !== undefined) inUse.push(layer.path);
      if (disk.mirror?.path !== undefined) inUse.push(disk.mirror.path);
    }
    for (const path of this.temporaries) {
      if (!(await exists(path))) continue;
      let used = false;
      for (const p of inUse) if (await samePath(p, path)) used = true;
      if (used) {
        this.note(`${path} is still in use: kept`);
        continue;
      }
      await rm(path, { force: true });
      this.act(`removed ${path}`);
    }
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * A domain the mirror flow undefined for its copy (transient while it runs) that was shut down before anyone
 * defined it again is gone from libvirt; its intent log still has the saved definition. Defines it again (shut
 * off), so the rest of the recovery can look at it; returns what it did.
 */
async function defineVanishedDomain(hypervisor: Hypervisor, domain: string, stateDir: string): Promise<string | undefined> {
  try {
    await hypervisor.domainInfo(domain);
    return undefined;
  } catch (error) {
    if (!isHypervisorError(error, 'NO_DOMAIN')) throw error;
  }
  let names: string[];
  try {
    names = (await readdir(stateDir)).filter((f) => f.endsWith('.json'));
  } catch {
    return undefined;
  }
  for (const file of names) {
    const record = await readIntent(stateDir, file.slice(0, -'.json'.length)).catch(() => undefined);
    if (record === undefined || (record.domain !== domain && record.uuid !== domain)) continue;
    if (!record.persistent || record.persistentXml === undefined || !record.definitionChanged) continue;
    if ((await ownerStatus(record.owner)) !== 'dead') throw await busyError(record, intentLogPath(stateDir, record.uuid));
    await hypervisor.define(record.persistentXml);
    return `defined domain ${record.domain} again from its saved definition (the killed run had left it transient, and it was shut down since)`;
  }
  return undefined;
}

/**
 * Recovers `domain` from a killed snapshot run; see the file comment. Throws IN_PROGRESS when a live run holds
 * the domain's intent log, RECOVERY_INCOMPLETE (keeping the log) when something could not be brought back.
 */
export async function recoverDomain(hypervisor: Hypervisor, domain: string, options: RecoverOptions = {}): Promise<RecoveryReport> {
  const stateDir = options.stateDir ?? defaultStateDir();
  const redefined = await defineVanishedDomain(hypervisor, domain, stateDir);
  const info = await hypervisor.domainInfo(domain);
  const record = await readIntent(stateDir, info.uuid);
  if (record !== undefined && (await ownerStatus(record.owner)) !== 'dead') throw await busyError(record, intentLogPath(stateDir, info.uuid));
  const name = info.name;
  const stillRunning = await waitForCallsInFlight(name, options.inFlightTimeoutMs ?? 60_000);
  const recovery = new Recovery(hypervisor, name, record, options.onAction ?? (() => {}));
  if (redefined !== undefined) recovery.report.actions.push(redefined);
  if (stillRunning.length > 0) recovery.report.notes.push(`virsh calls on ${name} still running after the wait (pids ${stillRunning.join(', ')})`);
  // Changes made by calls the killed run left in flight may land while we look: go round until a pass finds
  // nothing to do.
  const where = record === undefined ? '' : `; the intent log ${intentLogPath(stateDir, info.uuid)} is kept: run vm recover again`;
  for (let pass = 0, failures = 0; pass < 6; pass++) {
    try {
      if (!(await recovery.pass())) break;
    } catch (error) {
      // A busy libvirt answers the second time; a step that keeps failing stops the recovery, log kept.
      if (++failures >= 2) throw new SnapshotError('RECOVERY_INCOMPLETE', `recovering domain ${name} failed: ${messageOf(error)}${where}`, { domain: name, cause: error });
    }
    await new Promise((resolve) => setTimeout(resolve, 300));
  }
  const left = await recovery.remaining();
  if (left.length > 0) {
    const notes = recovery.report.notes.length > 0 ? ` (${recovery.report.notes.join('; ')})` : '';
    throw new SnapshotError(
      'RECOVERY_INCOMPLETE',
      `domain ${name} is not fully recovered: ${left.join('; ')}${notes}${where}`,
      { domain: name },
    );
  }
  try {
    await recovery.removeTemporaries();
  } catch (error) {
    throw new SnapshotError('RECOVERY_INCOMPLETE', `domain ${name} is back, but removing the temporary files failed: ${messageOf(error)}`, { domain: name, cause: error });
  }
  if (record !== undefined) await removeIntent(intentLogPath(stateDir, info.uuid));
  await removeStaleIntentTemporaries(stateDir);
  recovery.report.nothingToDo = record === undefined && recovery.report.actions.length === 0;
  return recovery.report;
}
