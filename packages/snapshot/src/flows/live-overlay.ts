/**
 * Live snapshot through a temporary overlay (beyond nova): an atomic, disk-only external snapshot (optionally
 * quiesced by the guest agent) puts a new, empty qcow2 on top of the disk. From then on the guest writes only
 * to the overlay, and the chain beneath it is read-only: exactly the disk at the snapshot's point in time. That
 * chain is converted into the output while the guest runs; then an active block commit merges the overlay into
 * the image below it and pivots the guest back onto it, and the overlay is deleted.
 *
 * Costs: one read pass of the chain; host space only for what the guest writes meanwhile; no copy of the disk.
 *
 * When anything fails after the snapshot, the overlay is committed back all the same (it holds the guest's
 * newest writes, so it is never just deleted). If the commit fails twice, the guest keeps running on the
 * overlay, which is left in place, and the error (OVERLAY_KEPT) says how to merge it later: nothing is lost.
 */
import { SnapshotError, isHypervisorError, messageOf } from '../errors.js';
import {
  conclude,
  convertChain,
  preflightChain,
  quiesceUnavailable,
  refuseRunningBlockJob,
  removeFile,
  restoreRunState,
  Restorer,
  samePath,
  temporaryPath,
  type FlowContext,
} from './context.js';

/** Whether the disk's active image is `overlay` now. */
async function runsOnOverlay(context: FlowContext, overlay: string): Promise<boolean> {
  const disk = (await context.hypervisor.disks(context.domain)).find((d) => d.target === context.disk.target);
  const top = disk?.chain[0]?.path;
  return top !== undefined && (await samePath(top, overlay));
}

export async function overlaySnapshot(context: FlowContext): Promise<void> {
  const { hypervisor, domain, info, disk, disks } = context;
  const target = disk.target;
  const before = info.state;
  const restorer = new Restorer();
  const overlay = temporaryPath(context, 'overlay');
  let primary: { error: unknown } | undefined;
  let persistentXml: string | undefined;
  let snapshotTried = false;
  let onOverlay = false;
  try {
    await refuseRunningBlockJob(context);
    await preflightChain(context);
    if (info.persistent) {
      // libvirt points the persistent definition at the overlay, and back at the pivot; the saved one is put
      // back afterwards so that not even its formatting changes.
      context.onStep('dumpxml');
      persistentXml = await hypervisor.dumpXml(domain, { inactive: true, securityInfo: true });
    }
    const snapshot = (quiesce: boolean): Promise<void> =>
      hypervisor.snapshotDiskOnly(domain, {
        target,
        overlay,
        otherTargets: disks.filter((d) => d.target !== target).map((d) => d.target),
        quiesce,
      });
    context.onStep('snapshot');
    snapshotTried = true;
    let quiesce = context.quiesce !== 'off';
    if (quiesce && before !== 'running') {
      quiesceUnavailable(context, new SnapshotError('QUIESCE_FAILED', `domain ${domain} is ${before}: a guest that does not run cannot be quiesced`));
      quiesce = false;
    }
    try {
      await snapshot(quiesce);
    } catch (error) {
      if (!quiesce || !isHypervisorError(error, 'AGENT_UNAVAILABLE')) throw error;
      quiesceUnavailable(context, error);
      context.onStep('snapshot');
      await snapshot(false);
    }
    onOverlay = await runsOnOverlay(context, overlay);
    if (!onOverlay) throw new SnapshotError('CHAIN_MISMATCH', `after the snapshot, ${domain}/${target} does not write to the overlay ${overlay}`, { domain });
    // The chain below the overlay no longer changes: read it while the guest goes on writing to the overlay.
    await convertChain(context, disk.chain, disk.chainComplete);
  } catch (error) {
    primary = { error };
  }

  // A failure reported by the snapshot command does not prove it did not happen (a timeout, a killed virsh).
  // undefined: unknown, so the overlay is neither committed nor deleted.
  let inUse: boolean | undefined = onOverlay;
  if (snapshotTried && !onOverlay) {
    inUse = undefined;
    await restorer.attempt('check whether the snapshot was taken', async () => {
      inUse = await runsOnOverlay(context, overlay);
    });
  }
  let removable = snapshotTried && inUse === false;
  if (inUse === true) {
    removable = await commitOverlay(context, overlay);
    if (!removable) {
      restorer.errors.push(
        new SnapshotError(
          'OVERLAY_KEPT',
          `could not merge the temporary overlay back: domain ${domain} keeps running on ${overlay} (nothing is lost); merge it later with: virsh blockcommit ${domain} ${target} --active --shallow --pivot --wait, then delete ${overlay}`,
          { domain },
        ),
      );
    } else if (persistentXml !== undefined) {
      const xml = persistentXml;
      await restorer.attempt('define the domain again', async () => {
        context.onStep('define');
        await hypervisor.define(xml);
      });
    }
  }
  await restorer.attempt('restore the guest run state', () => restoreRunState(context, before, false));
  if (removable) {
    await restorer.attempt('remove the overlay', async () => {
      context.onStep('remove-temporary');
      await removeFile(overlay);
    });
  }
  await conclude(context, primary, restorer);
}

/** Active commit of the overlay into the image below, with pivot; tried twice. Returns whether the guest is off the overlay. */
async function commitOverlay(context: FlowContext, overlay: string): Promise<boolean> {
  const { hypervisor, domain, disk } = context;
  for (let round = 0; round < 2; round++) {
    try {
      // A commit that failed half way may have left its job behind.
      if ((await hypervisor.blockJob(domain, disk.target)) !== undefined) {
        context.onStep('blockjob-abort');
        await hypervisor.abortBlockJob(domain, disk.target);
      }
      context.onStep('blockcommit');
      await hypervisor.blockCommitActive(domain, disk.target);
      if (!(await runsOnOverlay(context, overlay))) return true;
    } catch (error) {
      context.notes.push(`block commit failed: ${messageOf(error)}`);
      try {
        if (!(await runsOnOverlay(context, overlay))) return true;
      } catch {
        // fall through to the next round
      }
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  return false;
}
