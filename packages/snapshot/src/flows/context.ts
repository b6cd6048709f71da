/**
 * What every flow shares: the domain, the disks being snapshotted with their outputs, the options, and the run's
 * intent log — each step that changes the guest is announced there (durably) before it is taken.
 */
import { realpath } from 'node:fs/promises';
import { SnapshotError } from '../errors.js';
import type { DiskDefinition, DomainInfo, Hypervisor } from '../hypervisor.js';
import type { IntentLog, IntentOutput, IntentRecord } from '../intent/intent-log.js';
import { killPoint } from '../intent/kill-point.js';
import type { OutputFormat } from '../write-image.js';

export type QuiesceMode = 'off' | 'try' | 'require';

/**
 * The steps of the flows, in the words of the virsh commands they stand for (and `convert`, `publish`: the
 * output renamed into place, `finish`: the intent log removed); reported through onStep, and the names the
 * QCOWKIT_TEST_KILL_AT hook knows.
 */
export type SnapshotStep =
  | 'inspect'
  | 'recover'
  | 'managedsave'
  | 'start'
  | 'suspend'
  | 'resume'
  | 'dumpxml'
  | 'create-delta'
  | 'undefine'
  | 'blockcopy'
  | 'fsfreeze'
  | 'blockjob-abort'
  | 'define'
  | 'fsthaw'
  | 'snapshot'
  | 'blockcommit'
  | 'pivot'
  | 'convert'
  | 'publish'
  | 'remove-temporary'
  | 'finish';

/** One disk of the run and the image it is written into. */
export interface DiskJob {
  disk: DiskDefinition;
  output: IntentOutput;
  /** The disk's size, known once its chain was opened for the conversion. */
  virtualSize?: number;
}

/** When the snapshot was taken: the disks hold the guest's writes up to a moment between these two. */
export interface SnapshotInstant {
  notBefore: string;
  at: string;
}

export interface FlowContext {
  hypervisor: Hypervisor;
  domain: string;
  info: DomainInfo;
  /** All the domain's disks (live XML when it runs). */
  disks: DiskDefinition[];
  /** The disks being snapshotted, each with its output (one, or every disk with --all-disks). */
  jobs: DiskJob[];
  format: OutputFormat;
  compress: boolean;
  quiesce: QuiesceMode;
  tempDir: string;
  onProgress: ((done: number, total: number) => void) | undefined;
  onStep: (step: SnapshotStep) => void;
  /** Things worth telling the user that are not errors ("guest agent not available: not quiesced"). */
  notes: string[];
  intent: IntentLog;
  /** Set by the flow when it takes the snapshot (the external snapshot, the copy's abort, the managed save). */
  instant?: SnapshotInstant;
  /** Written after the outputs are published (all-disks: the manifest), if any. */
  afterPublish?: () => Promise<void>;
}

/** Announces `step` in the intent log (with `patch`: what undoing it needs), then reports it; then the step acts. */
export async function enterStep(context: FlowContext, step: SnapshotStep, patch: Partial<IntentRecord> = {}): Promise<void> {
  await context.intent.update({ ...patch, step });
  context.onStep(step);
  killPoint(step);
}

/** Reports a step that changes nothing the intent log must know about (a retry, a cleanup). */
export function reportStep(context: FlowContext, step: SnapshotStep): void {
  context.onStep(step);
  killPoint(step);
}

async function canonical(path: string): Promise<string> {
  try {
    return await realpath(path);
  } catch {
    return path;
  }
}

export async function samePath(a: string, b: string): Promise<boolean> {
  return (await canonical(a)) === (await canonical(b));
}

/** Refuses to start while a block job runs on a disk: it is someone else's, and is left alone. */
export async function refuseRunningBlockJobs(context: FlowContext): Promise<void> {
  for (const { disk } of context.jobs) {
    const job = await context.hypervisor.blockJob(context.domain, disk.target);
    if (job !== undefined) {
      throw new SnapshotError('BLOCK_JOB_ACTIVE', `a ${job.type} job is running on ${context.domain}/${disk.target}; wait for it or abort it first`, { domain: context.domain });
    }
  }
}

/** Runs the step that fixes the snapshot's point in time, and records when that was. */
export async function atInstant<T>(context: FlowContext, take: () => Promise<T>): Promise<T> {
  const notBefore = new Date().toISOString();
  const result = await take();
  context.instant = { notBefore, at: new Date().toISOString() };
  return result;
}
