/**
 * Live snapshot through temporary overlays (beyond nova): one atomic, disk-only external snapshot (optionally
 * quiesced by the guest agent) puts a new, empty qcow2 on top of each disk being snapshotted — several disks in
 * one libvirt call, which QEMU takes as one transaction, so they are all at one instant. From then on the guest
 * writes only to the overlays, and the chains beneath them are read-only: exactly the disks at that instant.
 * They are converted while the guest runs; then an active block commit merges each overlay into the image
 * below it and pivots the guest back onto it, and the overlays are deleted.
 *
 * Costs: one read pass of each chain; host space only for what the guest writes meanwhile; no copy of a disk.
 *
 * Steps (each announced in the intent log first): dumpxml, snapshot, convert (per disk), blockcommit and pivot
 * (per disk), define, publish, remove-temporary, finish. When anything fails after the snapshot, each overlay
 * is committed back all the same (it holds the guest's newest writes, so it is never just deleted). If a commit
 * fails twice, the guest keeps running on that overlay, which is left in place with the intent log, and the
 * error (OVERLAY_KEPT) says how to merge it: nothing is lost.
 */
import { SnapshotError, isHypervisorError, messageOf } from '../errors.js';
import { temporaryPath } from '../intent/temporaries.js';
import { atInstant, enterStep, refuseRunningBlockJobs, reportStep, samePath, type DiskJob, type FlowContext } from './context.js';
import { convertChain, preflightChain } from './outputs.js';
import { finishRun, quiesceUnavailable, restoreRunState, Restorer } from './restore.js';

/** Whether the disk's active image is `overlay` now. */
async function runsOnOverlay(context: FlowContext, target: string, overlay: string): Promise<boolean> {
  const disk = (await context.hypervisor.disks(context.domain)).find((d) => d.target === target);
  const top = disk?.chain[0]?.path;
  return top !== undefined && (await samePath(top, overlay));
}

export async function overlaySnapshot(context: FlowContext): Promise<void> {
  const { hypervisor, domain, info, disks, jobs } = context;
  const before = info.state;
  const restorer = new Restorer();
  const overlays = jobs.map((job) => ({ job, overlay: temporaryPath(job.output.path, 'overlay', context.tempDir) }));
  let primary: { error: unknown } | undefined;
  let persistentXml: string | undefined;
  let snapshotTried = false;
  let allOnOverlays = false;
  try {
    await refuseRunningBlockJobs(context);
    for (const job of jobs) await preflightChain(job.disk, job.output.path);
    if (info.persistent) {
      // libvirt points the persistent definition at the overlays, and back at the pivots; the saved one is put
      // back afterwards so that not even its formatting changes.
      await enterStep(context, 'dumpxml');
      persistentXml = await hypervisor.dumpXml(domain, { inactive: true, securityInfo: true });
    }
    const targets = new Set(jobs.map((j) => j.disk.target));
    const snapshot = (quiesce: boolean): Promise<void> =>
      hypervisor.snapshotDiskOnly(domain, {
        overlays: overlays.map(({ job, overlay }) => ({ target: job.disk.target, overlay })),
        otherTargets: disks.filter((d) => !targets.has(d.target)).map((d) => d.target),
        quiesce,
      });
    await enterStep(context, 'snapshot', {
      ...(persistentXml === undefined ? {} : { persistentXml }),
      definitionChanged: true,
      disks: overlays.map(({ job, overlay }) => ({ target: job.disk.target, path: job.disk.chain[0]!.path!, format: job.disk.chain[0]!.format, overlay })),
    });
    snapshotTried = true;
    let quiesce = context.quiesce !== 'off';
    if (quiesce && before !== 'running') {
      quiesceUnavailable(context, new SnapshotError('QUIESCE_FAILED', `domain ${domain} is ${before}: a guest that does not run cannot be quiesced`));
      quiesce = false;
    }
    try {
      await atInstant(context, () => snapshot(quiesce));
    } catch (error) {
      if (!quiesce || !isHypervisorError(error, 'AGENT_UNAVAILABLE')) throw error;
      quiesceUnavailable(context, error);
      reportStep(context, 'snapshot');
      await atInstant(context, () => snapshot(false));
    }
    for (const { job, overlay } of overlays) {
      if (!(await runsOnOverlay(context, job.disk.target, overlay))) {
        throw new SnapshotError('CHAIN_MISMATCH', `after the snapshot, ${domain}/${job.disk.target} does not write to the overlay ${overlay}`, { domain });
      }
    }
    allOnOverlays = true;
    // The chains below the overlays no longer change: read them while the guest goes on writing to the overlays.
    for (const job of jobs) await convertChain(context, job, job.disk.chain, job.disk.chainComplete);
  } catch (error) {
    primary = { error };
  }

  // A failure reported by the snapshot command does not prove it did not happen (a timeout, a killed virsh).
  // Each overlay in use is committed back; one whose use cannot be checked is neither committed nor deleted.
  const removable: string[] = [];
  let committedAny = false;
  for (const { job, overlay } of overlays) {
    if (!snapshotTried) break;
    // undefined: unknown (the check failed twice).
    const use: { now: boolean | undefined } = { now: allOnOverlays ? true : undefined };
    if (use.now === undefined) {
      await restorer.attempt('check whether the snapshot was taken', async () => {
        use.now = await runsOnOverlay(context, job.disk.target, overlay);
      });
    }
    if (use.now === false) removable.push(overlay);
    if (use.now !== true) continue;
    if (await commitOverlay(context, job, overlay)) {
      removable.push(overlay);
      committedAny = true;
    } else {
      const target = job.disk.target;
      restorer.errors.push(
        new SnapshotError(
          'OVERLAY_KEPT',
          `could not merge the temporary overlay back: domain ${domain} keeps running on ${overlay} (nothing is lost); merge it later with: virsh blockcommit ${domain} ${target} --active --shallow --pivot --wait, then delete ${overlay}`,
          { domain },
        ),
      );
    }
  }
  if (committedAny && persistentXml !== undefined && removable.length === overlays.length) {
    const xml = persistentXml;
    await restorer.attempt('define the domain again', async () => {
      await enterStep(context, 'define');
      await hypervisor.define(xml);
    });
  }
  await restorer.attempt('restore the guest run state', () => restoreRunState(context, before, false));
  await finishRun(context, primary, restorer, removable);
}

/** Active commit of the overlay into the image below, then pivot; tried twice. Returns whether the guest is off the overlay. */
async function commitOverlay(context: FlowContext, job: DiskJob, overlay: string): Promise<boolean> {
  const { hypervisor, domain } = context;
  const target = job.disk.target;
  for (let round = 0; round < 2; round++) {
    try {
      // A commit that failed half way may have left its job behind.
      if ((await hypervisor.blockJob(domain, target)) !== undefined) {
        reportStep(context, 'blockjob-abort');
        await hypervisor.abortBlockJob(domain, target);
      }
      await enterStep(context, 'blockcommit');
      await hypervisor.blockCommitActive(domain, target);
      await enterStep(context, 'pivot');
      await hypervisor.pivotBlockJob(domain, target);
      if (!(await runsOnOverlay(context, target, overlay))) return true;
    } catch (error) {
      context.notes.push(`block commit failed: ${messageOf(error)}`);
      try {
        if (!(await runsOnOverlay(context, target, overlay))) return true;
      } catch {
        // fall through to the next round
      }
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  return false;
}
