/**
 * Cold snapshot, as nova's: a running or paused guest is saved (managedsave: memory to disk, QEMU stopped), its
 * disk chain is converted into the output while nothing uses it, and the guest is started again from the saved
 * state (paused if it was paused) — in all cases, also when the conversion fails. A shut-off guest is never
 * started.
 */
import { conclude, convertChain, preflightChain, restoreRunState, Restorer, type FlowContext } from './context.js';

export async function coldSnapshot(context: FlowContext): Promise<void> {
  const { hypervisor, domain, info, disk } = context;
  const before = info.state;
  const active = before === 'running' || before === 'paused';
  const restorer = new Restorer();
  let primary: { error: unknown } | undefined;
  try {
    await preflightChain(context);
    if (active) {
      context.onStep('managedsave');
      await hypervisor.managedSave(domain);
    }
    // The chain as the running domain described it (complete), read while the guest is stopped.
    await convertChain(context, disk.chain, disk.chainComplete);
  } catch (error) {
    primary = { error };
  }
  // Also when managedsave itself reported a failure: it may have stopped the guest all the same.
  if (active) await restorer.attempt('start the guest again', () => restoreRunState(context, before, true));
  await conclude(context, primary, restorer);
}
