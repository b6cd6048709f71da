/**
 * Live snapshot, nova's way: a delta qcow2 over the disk's backing file receives a shallow block copy of the
 * top image; once the copy mirrors the disk, the file systems are (optionally) frozen and the job is aborted
 * without a pivot, which leaves the delta as a point-in-time copy of the top image while the guest goes on with
 * its disk. The delta plus the backing chain is then flattened into the output, and the delta deleted.
 *
 * libvirt refuses a block copy on a persistent domain unless the job is transient (--transient-job, libvirt
 * ≥ 1.2.19 and a virsh that has the flag); without it the domain is undefined for the copy and defined again
 * from the persistent XML saved first (dumpxml --inactive --security-info), whatever happens.
 *
 * Costs: the whole top image is copied once (host space: its size), then read again with the backing chain.
 *
 * Steps (each announced in the intent log first): dumpxml, create-delta, blockcopy (undefine, blockcopy without
 * transient jobs), fsfreeze, blockjob-abort, define, fsthaw, convert, publish, remove-temporary, finish.
 */
import { SnapshotError, isHypervisorError } from '../errors.js';
import { chainLayers, openChain } from '../disk-chain.js';
import type { DiskLayer } from '../hypervisor.js';
import { temporaryPath } from '../intent/temporaries.js';
import { createOverlayImage } from '../write-image.js';
import { atInstant, enterStep, refuseRunningBlockJobs, reportStep, type FlowContext } from './context.js';
import { convertChain, refuseOutputInChain } from './outputs.js';
import { finishRun, quiesceUnavailable, restoreRunState, Restorer } from './restore.js';

export async function mirrorSnapshot(context: FlowContext): Promise<void> {
  const { hypervisor, domain, info } = context;
  const job = context.jobs[0]!;
  const disk = job.disk;
  const target = disk.target;
  const before = info.state;
  const restorer = new Restorer();
  const delta = temporaryPath(job.output.path, 'delta', context.tempDir);
  let primary: { error: unknown } | undefined;
  let persistentXml: string | undefined;
  let deltaCreated = false;
  let copyStarted = false;
  let undefinedForCopy = false;
  let frozen = false;
  let layers: DiskLayer[] = [];
  try {
    await refuseRunningBlockJobs(context);
    // The disk's size and backing chain, from the images opened with the XML's formats (force-share: the guest
    // may be writing the top image, as for qemu-img info -U).
    const source = await openChain(disk.chain, disk.chainComplete, { forceShare: true });
    let size: number;
    try {
      await refuseOutputInChain(source, job.output.path);
      size = source.size;
      layers = disk.chainComplete ? disk.chain : chainLayers(source);
    } finally {
      await source.close();
    }
    const backing = layers[1];
    if (info.persistent) {
      await enterStep(context, 'dumpxml');
      persistentXml = await hypervisor.dumpXml(domain, { inactive: true, securityInfo: true });
    }
    await enterStep(context, 'create-delta', {
      ...(persistentXml === undefined ? {} : { persistentXml }),
      disks: [{ target, path: disk.chain[0]!.path!, format: disk.chain[0]!.format, delta }],
    });
    deltaCreated = true;
    await createOverlayImage(delta, size, backing === undefined ? undefined : { path: backing.path!, format: backing.format! });

    await enterStep(context, 'blockcopy');
    const copy = (transientJob: boolean): Promise<void> =>
      hypervisor.blockCopy(domain, target, delta, { shallow: true, reuseExternal: true, transientJob, format: 'qcow2' });
    try {
      copyStarted = true;
      await copy(true);
    } catch (error) {
      if (!isHypervisorError(error, 'UNSUPPORTED')) throw error;
      // No transient block jobs here: nova's way, a transient domain for the time of the copy.
      if ((await hypervisor.blockJob(domain, target)) !== undefined) throw error;
      if (persistentXml !== undefined) {
        await enterStep(context, 'undefine', { definitionChanged: true });
        undefinedForCopy = true;
        await hypervisor.undefine(domain);
      }
      reportStep(context, 'blockcopy');
      await copy(false);
    }

    if (context.quiesce !== 'off') {
      if (before !== 'running') {
        quiesceUnavailable(context, new SnapshotError('QUIESCE_FAILED', `domain ${domain} is ${before}: a guest that does not run cannot be quiesced`));
      } else {
        await enterStep(context, 'fsfreeze', { mayBeFrozen: true });
        // A freeze that reported a failure may have frozen some file systems: thaw unless the agent is absent.
        frozen = true;
        try {
          await hypervisor.fsFreeze(domain);
        } catch (error) {
          if (isHypervisorError(error, 'AGENT_UNAVAILABLE')) frozen = false;
          quiesceUnavailable(context, error);
        }
      }
    }
    // The point in time of the snapshot: the delta stops following the disk.
    await enterStep(context, 'blockjob-abort');
    await atInstant(context, () => hypervisor.abortBlockJob(domain, target));
    copyStarted = false;
  } catch (error) {
    primary = { error };
  }

  // Put the domain back, whatever happened: no job, its definition, thawed, running or paused as it was.
  if (copyStarted) {
    await restorer.attempt('abort the block copy', async () => {
      if ((await hypervisor.blockJob(domain, target)) !== undefined) {
        reportStep(context, 'blockjob-abort');
        await hypervisor.abortBlockJob(domain, target);
      }
      copyStarted = false;
    });
  }
  if (undefinedForCopy && persistentXml !== undefined) {
    const xml = persistentXml;
    const defined = await restorer.attempt('define the domain again', async () => {
      await enterStep(context, 'define');
      await hypervisor.define(xml);
    });
    if (!defined) {
      restorer.errors.push(
        new SnapshotError('RESTORE_FAILED', `domain ${domain} is transient now (its definition was removed for the block copy); define it again: virsh dumpxml --security-info ${domain} > ${domain}.xml; virsh define ${domain}.xml`, { domain }),
      );
    }
  }
  if (frozen) {
    await restorer.attempt('thaw the guest file systems', async () => {
      await enterStep(context, 'fsthaw');
      await hypervisor.fsThaw(domain);
    });
  }
  await restorer.attempt('restore the guest run state', () => restoreRunState(context, before, false));

  if (primary === undefined && restorer.errors.length === 0) {
    try {
      await convertChain(context, job, [{ type: 'file', path: delta, format: 'qcow2' }, ...layers.slice(1)], true);
    } catch (error) {
      primary = { error };
    }
  }
  // The delta is deleted only once no job writes into it (else it stays, with the intent log, for `vm recover`).
  await finishRun(context, primary, restorer, deltaCreated && !copyStarted ? [delta] : []);
}
