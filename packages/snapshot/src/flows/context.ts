/** What every flow shares: the chosen disk, the options, restoring the guest, and reporting what went wrong. */
import { randomBytes } from 'node:crypto';
import { realpath, rm } from 'node:fs/promises';
import { basename, join } from 'node:path';
import type { BlockDevice } from '@qcowkit/qcow2/engine';
import { openChain } from '../disk-chain.js';
import { SnapshotError, isHypervisorError, messageOf } from '../errors.js';
import type { DiskDefinition, DiskLayer, DomainInfo, DomainState, Hypervisor } from '../hypervisor.js';
import { trackCalls, writeImage, type OutputFormat } from '../write-image.js';

export type QuiesceMode = 'off' | 'try' | 'require';

/** The steps of the flows, in the words of the virsh commands they stand for; reported through onStep. */
export type SnapshotStep =
  | 'inspect'
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
  | 'convert'
  | 'remove-temporary';

export interface FlowContext {
  hypervisor: Hypervisor;
  domain: string;
  info: DomainInfo;
  /** All the domain's disks (live XML when it runs) and the one being snapshotted. */
  disks: DiskDefinition[];
  disk: DiskDefinition;
  output: string;
  format: OutputFormat;
  compress: boolean;
  quiesce: QuiesceMode;
  tempDir: string;
  onProgress: ((done: number, total: number) => void) | undefined;
  onStep: (step: SnapshotStep) => void;
  /** Things worth telling the user that are not errors ("guest agent not available: not quiesced"). */
  notes: string[];
  /** Set once the output file is created: only then does a failure remove it. */
  outputCreated: boolean;
}

/** A fresh temporary image name beside the output: NAME.qcowkit-KIND-RANDOM.qcow2. */
export function temporaryPath(context: FlowContext, kind: 'delta' | 'overlay'): string {
  return join(context.tempDir, `${basename(context.output)}.qcowkit-${kind}-${randomBytes(6).toString('hex')}.qcow2`);
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

/** Refuses an output that is one of the images being read (it would be truncated under the guest). */
export async function refuseOutputInChain(source: BlockDevice, output: string): Promise<void> {
  for (let layer: BlockDevice | undefined = source; layer !== undefined; layer = layer.backing) {
    if (await samePath(layer.filename, output)) {
      throw new SnapshotError('BAD_ARGUMENT', `the output ${output} is an image of the disk's chain (${layer.filename})`);
    }
  }
}

/** Opens the chain, checks it, and closes it: done before anything is changed, so a bad disk fails early. */
export async function preflightChain(context: FlowContext): Promise<void> {
  const source = await openChain(context.disk.chain, context.disk.chainComplete);
  try {
    await refuseOutputInChain(source, context.output);
  } finally {
    await source.close();
  }
}

/** Converts the chain `layers` into the output with the engine (formats from the XML, never probed). */
export async function convertChain(context: FlowContext, layers: readonly DiskLayer[], complete: boolean): Promise<void> {
  context.onStep('convert');
  const source = await openChain(layers, complete);
  const drainReads = trackCalls(source, ['read']);
  try {
    await refuseOutputInChain(source, context.output);
    context.outputCreated = true;
    await writeImage(source, context.output, {
      format: context.format,
      compress: context.compress,
      ...(context.onProgress === undefined ? {} : { onProgress: context.onProgress }),
    });
  } finally {
    await drainReads();
    await source.close();
  }
}

export async function removeFile(path: string): Promise<void> {
  await rm(path, { force: true });
}

/**
 * Collects the failures of the steps that put things back. Each such step is tried twice (a busy libvirt
 * answers the second time), and a failure does not stop the steps after it.
 */
export class Restorer {
  readonly errors: unknown[] = [];

  constructor(private readonly retryDelayMs = 200) {}

  async attempt(what: string, action: () => Promise<void>): Promise<boolean> {
    for (let round = 0; ; round++) {
      try {
        await action();
        return true;
      } catch (error) {
        if (round >= 1) {
          this.errors.push(error instanceof SnapshotError ? error : new Error(`${what}: ${messageOf(error)}`, { cause: error }));
          return false;
        }
        await new Promise((resolve) => setTimeout(resolve, this.retryDelayMs));
      }
    }
  }
}

/**
 * Brings the guest back to the run state it had: resume or suspend it, and start it (paused if it was paused)
 * when `allowStart` (cold flow: it was saved) and it is shut off now.
 */
export async function restoreRunState(context: FlowContext, before: DomainState, allowStart: boolean): Promise<void> {
  const { hypervisor, domain } = context;
  if (before !== 'running' && before !== 'paused') return;
  let now = await hypervisor.domainState(domain);
  if (now === before) return;
  if (now === 'shutoff' && allowStart) {
    context.onStep('start');
    await hypervisor.start(domain, { paused: before === 'paused' });
    now = await hypervisor.domainState(domain);
  }
  if (before === 'running' && now === 'paused') {
    context.onStep('resume');
    await hypervisor.resume(domain);
  } else if (before === 'paused' && now === 'running') {
    context.onStep('suspend');
    await hypervisor.suspend(domain);
  }
  now = await hypervisor.domainState(domain);
  if (now !== before) throw new SnapshotError('INVALID_STATE', `domain ${domain} is ${now} after the snapshot; it was ${before}`, { domain });
}

/**
 * Ends a flow: throws the error that stopped it (unchanged when everything was put back), or the failures of
 * putting things back. Removes the output whenever it throws: a caller that gets an error gets no output.
 */
export async function conclude(context: FlowContext, primary: { error: unknown } | undefined, restorer: Restorer): Promise<void> {
  if (primary === undefined && restorer.errors.length === 0) return;
  if (context.outputCreated) await removeFile(context.output).catch(() => {});
  const restoreErrors = restorer.errors;
  if (primary !== undefined) {
    if (restoreErrors.length === 0) throw primary.error;
    throw new SnapshotError('RESTORE_FAILED', `${messageOf(primary.error)}; then putting the guest back failed: ${restoreErrors.map(messageOf).join('; ')}`, {
      domain: context.domain,
      cause: primary.error,
      restoreErrors,
    });
  }
  const kept = restoreErrors.find((e) => e instanceof SnapshotError && e.code === 'OVERLAY_KEPT');
  if (kept !== undefined && restoreErrors.length === 1) throw kept;
  throw new SnapshotError('RESTORE_FAILED', `the snapshot was taken, but putting the guest back failed: ${restoreErrors.map(messageOf).join('; ')}`, {
    domain: context.domain,
    restoreErrors,
  });
}

/** Freezing through the agent failed: go on without (try) or stop (require); other failures stop anyway. */
export function quiesceUnavailable(context: FlowContext, error: unknown): void {
  const unavailable = isHypervisorError(error, 'AGENT_UNAVAILABLE') || (error instanceof SnapshotError && error.code === 'QUIESCE_FAILED');
  if (!unavailable) throw error;
  if (context.quiesce === 'require') {
    throw error instanceof SnapshotError ? error : new SnapshotError('QUIESCE_FAILED', `cannot quiesce domain ${context.domain}: ${messageOf(error)}`, { domain: context.domain, cause: error });
  }
  context.notes.push(`not quiesced: ${messageOf(error)}`);
}

/** Refuses to start while a block job runs on the disk: it is someone else's, and is left alone. */
export async function refuseRunningBlockJob(context: FlowContext): Promise<void> {
  const job = await context.hypervisor.blockJob(context.domain, context.disk.target);
  if (job !== undefined) {
    throw new SnapshotError('BLOCK_JOB_ACTIVE', `a ${job.type} job is running on ${context.domain}/${context.disk.target}; wait for it or abort it first`, { domain: context.domain });
  }
}
