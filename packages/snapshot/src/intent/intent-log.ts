/**
 * The intent log of a snapshot run: one JSON file per domain, `$XDG_STATE_HOME/qcowkit/vm/<domain-uuid>.json`
 * (default `~/.local/state`), that says — before each step that changes the guest — what is about to happen and
 * everything needed to undo it: the temporary overlays and deltas, the saved persistent definition, the run
 * state the guest had, the partial outputs. A run killed at any point (SIGKILL, OOM, a lost session, a reboot)
 * leaves it behind, and `vm recover` (or the next `vm snapshot`) reads it to bring the guest back.
 *
 * Every write is durable before the step it announces: the record goes to a temporary file in the same
 * directory, is fsync'ed, renamed over the log, and the directory is fsync'ed. The first write is exclusive
 * (link(2) fails when a log exists), so the log also keeps two runs off one domain. The log is removed only
 * once the guest is back as it was. The directory is 0700 and the file 0600: the saved definition may hold
 * secrets (`dumpxml --security-info`).
 */
import { randomBytes } from 'node:crypto';
import { link, mkdir, open, readdir, readFile, rename, rm } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { SnapshotError } from '../errors.js';
import type { DomainState } from '../hypervisor.js';
import { currentOwner, ownerStatus, pidExists, type IntentOwner } from './owner.js';

export type FlowName = 'overlay' | 'mirror' | 'cold' | 'all-disks';

/** One disk the run works on: its image before the run, and the temporary images the run made for it. */
export interface IntentDisk {
  target: string;
  /** The disk's active image before the run (the guest must end up writing to it again). */
  path: string;
  format: string | undefined;
  /** The temporary overlay the live overlay flows put on top of the disk. */
  overlay?: string;
  /** The mirror flow's copy destination. */
  delta?: string;
}

/** An output image: written under `partial`, renamed to `path` once flushed. */
export interface IntentOutput {
  path: string;
  partial: string;
}

export interface IntentRecord {
  format: 'qcowkit-vm-intent';
  version: 1;
  owner: IntentOwner;
  /** The libvirt connection the run used. */
  uri: string;
  domain: string;
  uuid: string;
  flow: FlowName;
  started: string;
  /** The step about to be taken, or being taken (the last one announced). */
  step: string;
  /** The run state before the run: what a cold flow must start the guest into again. */
  stateBefore: DomainState;
  persistent: boolean;
  /** The persistent definition before the run (dumpxml --inactive --security-info), to define again. */
  persistentXml?: string;
  /** Set before a step that may change the persistent definition (external snapshot, undefine). */
  definitionChanged?: boolean;
  /** Set before fsfreeze: the guest may be frozen until fsthaw. */
  mayBeFrozen?: boolean;
  /** Set before managedsave: the guest may be saved and must be started again. */
  mayBeSaved?: boolean;
  disks: IntentDisk[];
  outputs: IntentOutput[];
}

/** The state directory: $XDG_STATE_HOME/qcowkit/vm, or ~/.local/state/qcowkit/vm. */
export function defaultStateDir(env: NodeJS.ProcessEnv = process.env): string {
  const base = env.XDG_STATE_HOME !== undefined && env.XDG_STATE_HOME.startsWith('/') ? env.XDG_STATE_HOME : join(env.HOME ?? homedir(), '.local', 'state');
  return join(base, 'qcowkit', 'vm');
}

export function intentLogPath(stateDir: string, uuid: string): string {
  if (!/^[0-9a-fA-F-]{8,64}$/.test(uuid)) throw new SnapshotError('BAD_ARGUMENT', `not a domain UUID: '${uuid}'`);
  return join(stateDir, `${uuid.toLowerCase()}.json`);
}

async function syncDirectory(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Writes `text` into a new file beside `path`, durably; returns the temporary file's name. */
async function writeDurable(dir: string, text: string): Promise<string> {
  const temporary = join(dir, `.intent-${process.pid}-${randomBytes(4).toString('hex')}.tmp`);
  const handle = await open(temporary, 'wx', 0o600);
  try {
    await handle.writeFile(text);
    await handle.sync();
  } finally {
    await handle.close();
  }
  return temporary;
}

/** Reads a domain's log; undefined when there is none. A log that cannot be read is an error, never ignored. */
export async function readIntent(stateDir: string, uuid: string): Promise<IntentRecord | undefined> {
  const path = intentLogPath(stateDir, uuid);
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
  let record: IntentRecord;
  try {
    record = JSON.parse(text) as IntentRecord;
  } catch (error) {
    throw new SnapshotError('BAD_INTENT_LOG', `${path}: not a qcowkit intent log (${(error as Error).message}); look at it, then remove it`, { cause: error });
  }
  if (record?.format !== 'qcowkit-vm-intent' || record.version !== 1 || !Array.isArray(record.disks) || !Array.isArray(record.outputs)) {
    throw new SnapshotError('BAD_INTENT_LOG', `${path}: not a qcowkit intent log (version 1); look at it, then remove it`);
  }
  return record;
}

/** The log of one run, held by that run: created exclusively, updated durably before each step, removed at the end. */
export class IntentLog {
  private constructor(
    readonly path: string,
    private readonly dir: string,
    private current: IntentRecord,
  ) {}

  get record(): Readonly<IntentRecord> {
    return this.current;
  }

  /**
   * Creates the domain's log, or fails with IN_PROGRESS (another live run holds it) or LEFTOVERS (a dead run's
   * log: recover first).
   */
  static async create(stateDir: string, record: Omit<IntentRecord, 'format' | 'version' | 'owner' | 'started'>): Promise<IntentLog> {
    await mkdir(stateDir, { recursive: true, mode: 0o700 });
    const full: IntentRecord = { format: 'qcowkit-vm-intent', version: 1, owner: await currentOwner(), started: new Date().toISOString(), ...record };
    const path = intentLogPath(stateDir, record.uuid);
    const temporary = await writeDurable(stateDir, `${JSON.stringify(full, null, 2)}\n`);
    try {
      await link(temporary, path);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      const existing = await readIntent(stateDir, record.uuid);
      throw existing === undefined ? error : await busyError(existing, path);
    } finally {
      await rm(temporary, { force: true });
    }
    await syncDirectory(stateDir);
    return new IntentLog(path, stateDir, full);
  }

  /** Announces `step` (with what it will need undoing) durably, before it is taken. */
  async update(patch: Partial<Omit<IntentRecord, 'format' | 'version' | 'owner' | 'started'>>): Promise<void> {
    const next: IntentRecord = { ...this.current, ...patch };
    const temporary = await writeDurable(this.dir, `${JSON.stringify(next, null, 2)}\n`);
    try {
      await rename(temporary, this.path);
    } catch (error) {
      await rm(temporary, { force: true });
      throw error;
    }
    await syncDirectory(this.dir);
    this.current = next;
  }

  /** The guest is back as it was: nothing left to recover. */
  async remove(): Promise<void> {
    await removeIntent(this.path);
  }
}

/** Removes the half-written log updates (.intent-PID-….tmp) of processes that died while writing them. */
export async function removeStaleIntentTemporaries(stateDir: string): Promise<void> {
  let names: string[];
  try {
    names = await readdir(stateDir);
  } catch {
    return;
  }
  for (const name of names) {
    const match = /^\.intent-(\d+)-[0-9a-f]+\.tmp$/.exec(name);
    if (match !== null && !pidExists(Number(match[1]))) await rm(join(stateDir, name), { force: true });
  }
}

export async function removeIntent(path: string): Promise<void> {
  await rm(path, { force: true });
  await syncDirectory(join(path, '..')).catch(() => {});
}

/** The error for a log that exists: a live run (IN_PROGRESS) or a dead one (LEFTOVERS). */
export async function busyError(record: IntentRecord, path: string): Promise<SnapshotError> {
  const status = await ownerStatus(record.owner);
  const who = `qcowkit (pid ${record.owner.pid} on ${record.owner.host}, ${record.flow} snapshot started ${record.started})`;
  if (status !== 'dead') {
    return new SnapshotError(
      'IN_PROGRESS',
      `${who} is working on domain ${record.domain}${status === 'unknown' ? ' (on another host: it cannot be checked from here)' : ''}; its intent log is ${path}`,
      { domain: record.domain },
    );
  }
  return new SnapshotError('LEFTOVERS', `${who} stopped at step '${record.step}' and left domain ${record.domain} to recover; run: qcowkit vm recover ${record.domain}`, {
    domain: record.domain,
  });
}
