/**
 * What every snapshot run does before its flow: check the options, see the guest's state, deal with what a
 * killed run left (recover it from its intent log, or refuse when only libvirt shows it), choose live or cold as
 * nova's rule says, and take the domain's intent log (which also keeps a second run off the domain).
 */
import { dirname, resolve } from 'node:path';
import { SnapshotError } from './errors.js';
import { isQemuDomain, type DomainInfo, type Hypervisor } from './hypervisor.js';
import type { DiskJob, FlowContext, QuiesceMode, SnapshotStep } from './flows/context.js';
import { IntentLog, defaultStateDir, type FlowName } from './intent/intent-log.js';
import { findLeftovers, recoverDomain, type RecoveryReport } from './recover.js';
import type { OutputFormat } from './write-image.js';

export type SnapshotMode = 'auto' | 'live' | 'cold';

/** The options every run takes. */
export interface RunOptions {
  domain: string;
  /** auto (default): live when the guest runs or is paused on QEMU/KVM, cold otherwise. */
  mode?: SnapshotMode;
  /** Freeze the guest's file systems through the agent: off (default), try (go on without), require. */
  quiesce?: QuiesceMode;
  /** Output format, qcow2 (default) or raw. */
  format?: OutputFormat;
  /** Compressed qcow2 clusters (zlib). */
  compress?: boolean;
  /** Where the temporary delta or overlays go; default the output's directory (QEMU must be able to reach it). */
  tempDir?: string;
  /** Where intent logs live (default $XDG_STATE_HOME/qcowkit/vm, or ~/.local/state/qcowkit/vm). */
  stateDir?: string;
  /**
   * What to do with a killed run's intent log found on the domain: recover from it first (default), or refuse
   * (LEFTOVERS). Leftovers that only libvirt shows (no log) are always refused: `vm recover` deals with those.
   */
  recoverFirst?: boolean;
  onProgress?: (done: number, total: number) => void;
  onStep?: (step: SnapshotStep) => void;
}

/** A run being started: the checked options, the guest as it was, and whether it goes live. */
export interface PreparedRun {
  info: DomainInfo;
  live: boolean;
  format: OutputFormat;
  quiesce: QuiesceMode;
  stateDir: string;
  onStep: (step: SnapshotStep) => void;
  /** What recovering a killed run's leftovers did first, if there were any. */
  recovered: RecoveryReport | undefined;
}

export function checkOption<T extends string>(value: T | undefined, allowed: readonly T[], what: string): void {
  if (value !== undefined && !allowed.includes(value)) throw new SnapshotError('BAD_ARGUMENT', `${what} must be one of ${allowed.join(', ')} (got '${value}')`);
}

/** Checks the options and the guest, recovers a killed run first, and decides live or cold. Changes nothing else. */
export async function prepareRun(hypervisor: Hypervisor, options: RunOptions): Promise<PreparedRun> {
  checkOption(options.mode, ['auto', 'live', 'cold'], 'mode');
  checkOption(options.quiesce, ['off', 'try', 'require'], 'quiesce');
  checkOption(options.format, ['qcow2', 'raw'], 'output format');
  const format = options.format ?? 'qcow2';
  if (options.compress && format !== 'qcow2') throw new SnapshotError('BAD_ARGUMENT', 'compression needs qcow2 output');
  const onStep = options.onStep ?? (() => {});
  const stateDir = options.stateDir ?? defaultStateDir();
  const domain = options.domain;

  onStep('inspect');
  let info = await hypervisor.domainInfo(domain);
  let recovered: RecoveryReport | undefined;
  const leftovers = await findLeftovers(hypervisor, info, stateDir);
  if (leftovers.intent !== undefined && options.recoverFirst !== false) {
    // A dead run's log: recover from it (a live run's makes recoverDomain fail with IN_PROGRESS).
    onStep('recover');
    recovered = await recoverDomain(hypervisor, domain, { stateDir });
    info = await hypervisor.domainInfo(domain);
  } else if (leftovers.intent !== undefined || leftovers.visible.length > 0) {
    const what = leftovers.visible.map((l) => `${l.target}: ${l.kind === 'copy-job' ? 'a block copy into' : 'the temporary overlay'} ${l.path}`).join('; ');
    throw new SnapshotError(
      'LEFTOVERS',
      `domain ${domain} has leftovers of a killed qcowkit run${what === '' ? ' (an intent log)' : ` (${what})`}; recover them first: qcowkit vm recover ${domain}`,
      { domain },
    );
  }

  const active = info.state === 'running' || info.state === 'paused';
  if (!active && info.state !== 'shutoff') {
    throw new SnapshotError('INVALID_STATE', `domain ${domain} is ${info.state}: only running, paused or shut-off guests can be snapshotted`, { domain });
  }
  const mode = options.mode ?? 'auto';
  let live: boolean;
  if (mode === 'auto') live = active && isQemuDomain(info);
  else if (mode === 'live') {
    if (!active) throw new SnapshotError('INVALID_STATE', `domain ${domain} is shut off: a live snapshot needs a running or paused guest (use --mode cold or auto)`, { domain });
    if (!isQemuDomain(info)) throw new SnapshotError('INVALID_STATE', `domain ${domain} runs on '${info.virtType}': live snapshots need QEMU/KVM (use --mode cold or auto)`, { domain });
    live = true;
  } else live = false;
  return { info, live, format, quiesce: options.quiesce ?? 'off', stateDir, onStep, recovered };
}

/** Takes the domain's intent log and builds the flow's context. */
export async function openRun(
  hypervisor: Hypervisor,
  run: PreparedRun,
  options: RunOptions,
  flow: FlowName,
  disks: FlowContext['disks'],
  jobs: DiskJob[],
): Promise<FlowContext> {
  const intent = await IntentLog.create(run.stateDir, {
    uri: hypervisor.uri,
    domain: run.info.name,
    uuid: run.info.uuid,
    flow,
    step: 'inspect',
    stateBefore: run.info.state,
    persistent: run.info.persistent,
    disks: jobs.map(({ disk }) => ({ target: disk.target, path: disk.chain[0]?.path ?? '', format: disk.chain[0]?.format })),
    outputs: [],
  });
  return {
    hypervisor,
    domain: options.domain,
    info: run.info,
    disks,
    jobs,
    format: run.format,
    compress: options.compress ?? false,
    quiesce: run.quiesce,
    tempDir: resolve(options.tempDir ?? dirname(jobs[0]!.output.path)),
    onProgress: options.onProgress,
    onStep: run.onStep,
    notes: run.recovered === undefined ? [] : [`recovered what a killed run left first: ${run.recovered.actions.join('; ') || 'its intent log only'}`],
    intent,
  };
}
