/**
 * The outputs of a run: each disk's chain converted by the engine into a file under a temporary name in the
 * output's directory (NAME.qcowkit-partial-RANDOM, announced in the intent log first), flushed, and renamed
 * into place only once the guest is back — so a killed run never leaves a partial file under the name asked for,
 * and the rename is atomic over an earlier file of that name.
 */
import { open, rename, rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { BlockDevice } from '@qcowkit/qcow2/engine';
import { openChain } from '../disk-chain.js';
import { SnapshotError } from '../errors.js';
import type { DiskDefinition, DiskLayer } from '../hypervisor.js';
import { trackCalls, writeImage } from '../write-image.js';
import { enterStep, samePath, type DiskJob, type FlowContext } from './context.js';

/** Refuses an output that is one of the images being read (it would be replaced under the guest). */
export async function refuseOutputInChain(source: BlockDevice, output: string): Promise<void> {
  for (let layer: BlockDevice | undefined = source; layer !== undefined; layer = layer.backing) {
    if (await samePath(layer.filename, output)) {
      throw new SnapshotError('BAD_ARGUMENT', `the output ${output} is an image of the disk's chain (${layer.filename})`);
    }
  }
}

/**
 * Opens a disk's chain, checks it against its output, and closes it: before anything changes, so a bad disk fails
 * early. The guest may be running and writing its top image: looked at with force-share, as `qemu-img info -U`.
 */
export async function preflightChain(disk: DiskDefinition, output: string): Promise<void> {
  const source = await openChain(disk.chain, disk.chainComplete, { forceShare: true });
  try {
    await refuseOutputInChain(source, output);
  } finally {
    await source.close();
  }
}

/** Converts the chain `layers` into the job's partial output with the engine (formats from the XML, never probed). */
export async function convertChain(context: FlowContext, job: DiskJob, layers: readonly DiskLayer[], complete: boolean): Promise<void> {
  const outputs = context.intent.record.outputs.some((o) => o.partial === job.output.partial) ? context.intent.record.outputs : [...context.intent.record.outputs, job.output];
  await enterStep(context, 'convert', { outputs });
  const source = await openChain(layers, complete);
  const drainReads = trackCalls(source, ['read']);
  try {
    await refuseOutputInChain(source, job.output.path);
    job.virtualSize = source.size;
    await writeImage(source, job.output.partial, {
      format: context.format,
      compress: context.compress,
      ...(context.onProgress === undefined ? {} : { onProgress: context.onProgress }),
    });
  } finally {
    await drainReads();
    await source.close();
  }
}

/** Makes a rename (or a removal) in `dir` durable. */
export async function syncDirectory(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Renames every written output into place (they were flushed when written), then makes the renames durable. */
export async function publishOutputs(context: FlowContext): Promise<void> {
  await enterStep(context, 'publish');
  const dirs = new Set<string>();
  for (const { output } of context.jobs) {
    await rename(output.partial, output.path);
    dirs.add(dirname(output.path));
  }
  for (const dir of dirs) await syncDirectory(dir);
  if (context.afterPublish !== undefined) await context.afterPublish();
}

/** Removes the partial outputs of a run that failed (never a file under a name the user asked for). */
export async function removePartialOutputs(context: FlowContext): Promise<void> {
  for (const { output } of context.jobs) await rm(output.partial, { force: true });
}
