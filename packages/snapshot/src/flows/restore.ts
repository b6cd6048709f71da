/**
 * Putting the guest back after a flow, whatever happened: retried restore steps, the run state, and the end of
 * a run — outputs published only when everything worked, temporary files removed, the intent log removed only
 * once the guest is back as it was (otherwise it stays for `vm recover`).
 */
import { rm } from 'node:fs/promises';
import { SnapshotError, isHypervisorError, messageOf } from '../errors.js';
import type { DomainState } from '../hypervisor.js';
import { enterStep, type FlowContext } from './context.js';
import { publishOutputs, removePartialOutputs } from './outputs.js';

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
    await enterStep(context, 'start');
    await hypervisor.start(domain, { paused: before === 'paused' });
    now = await hypervisor.domainState(domain);
  }
  if (before === 'running' && now === 'paused') {
    await enterStep(context, 'resume');
    await hypervisor.resume(domain);
  } else if (before === 'paused' && now === 'running') {
    await enterStep(context, 'suspend');
    await hypervisor.suspend(domain);
  }
  now = await hypervisor.domainState(domain);
  if (now !== before) throw new SnapshotError('INVALID_STATE', `domain ${domain} is ${now} after the snapshot; it was ${before}`, { domain });
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

/**
 * Ends a run once the guest was put back (or putting it back failed): publishes the outputs when everything
 * worked, removes `temporaries` (only files nothing uses any more), removes the partial outputs of a failed run,
 * and the intent log when the guest is back. Then throws the error that stopped the run (unchanged when
 * everything was put back), or the failures of putting things back.
 */
export async function finishRun(context: FlowContext, primary: { error: unknown } | undefined, restorer: Restorer, temporaries: readonly string[]): Promise<void> {
  if (primary === undefined && restorer.errors.length === 0) {
    try {
      await publishOutputs(context);
    } catch (error) {
      primary = { error };
    }
  }
  if (temporaries.length > 0) {
    await restorer.attempt('remove the temporary files', async () => {
      await enterStep(context, 'remove-temporary');
      for (const path of temporaries) await rm(path, { force: true });
    });
  }
  if (primary !== undefined || restorer.errors.length > 0) await removePartialOutputs(context).catch(() => {});
  const back = restorer.errors.length === 0;
  if (back) {
    await enterStep(context, 'finish');
    await context.intent.remove();
  }
  if (primary === undefined && back) return;
  const domain = context.domain;
  const left = back ? '' : `; what is left is in ${context.intent.path}: run qcowkit vm recover ${domain}`;
  const restoreErrors = restorer.errors;
  if (primary !== undefined) {
    if (back) throw primary.error;
    throw new SnapshotError('RESTORE_FAILED', `${messageOf(primary.error)}; then putting the guest back failed: ${restoreErrors.map(messageOf).join('; ')}${left}`, {
      domain,
      cause: primary.error,
      restoreErrors,
    });
  }
  const kept = restoreErrors.find((e) => e instanceof SnapshotError && e.code === 'OVERLAY_KEPT') as SnapshotError | undefined;
  if (kept !== undefined && restoreErrors.length === 1) throw new SnapshotError('OVERLAY_KEPT', `${kept.message}${left}`, { domain, restoreErrors });
  throw new SnapshotError('RESTORE_FAILED', `the snapshot was taken, but putting the guest back failed: ${restoreErrors.map(messageOf).join('; ')}${left}`, {
    domain,
    restoreErrors,
  });
}
