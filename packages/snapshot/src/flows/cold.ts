/**
 * Cold snapshot, as nova's: a running or paused guest is saved (managedsave: memory to disk, QEMU stopped), its
 * disk chains are converted while nothing uses them, and the guest is started again from the saved state
 * (paused if it was paused) — in all cases, also when the conversion fails. A shut-off guest is never started.
 *
 * Steps (each announced in the intent log first): managedsave, convert (per disk), start, publish, finish.
 */
import { atInstant, enterStep, type FlowContext } from './context.js';
import { convertChain, preflightChain } from './outputs.js';
import { finishRun, restoreRunState, Restorer } from './restore.js';

export async function coldSnapshot(context: FlowContext): Promise<void> {
  const { hypervisor, domain, info } = context;
  const before = info.state;
  const active = before === 'running' || before === 'paused';
  const restorer = new Restorer();
  let primary: { error: unknown } | undefined;
  try {
    for (const job of context.jobs) await preflightChain(job.disk, job.output.path);
    if (active) {
      await enterStep(context, 'managedsave', { mayBeSaved: true });
      await atInstant(context, () => hypervisor.managedSave(domain));
    } else {
      // Shut off: the disks do not change while they are read.
      await atInstant(context, async () => {});
    }
    // The chains as the running domain described them (complete), read while the guest is stopped.
    for (const job of context.jobs) await convertChain(context, job, job.disk.chain, job.disk.chainComplete);
  } catch (error) {
    primary = { error };
  }
  // Also when managedsave itself reported a failure: it may have stopped the guest all the same.
  if (active) await restorer.attempt('start the guest again', () => restoreRunState(context, before, true));
  await finishRun(context, primary, restorer, []);
}
