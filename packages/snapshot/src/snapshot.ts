/**
 * snapshotDomain: one disk of a libvirt guest into a standalone image, the way nova's libvirt driver decides —
 * live while the guest runs (or is paused) on QEMU/KVM, cold otherwise — with two live methods: 'overlay'
 * (default: a temporary external snapshot, one read pass, no copy) and 'mirror' (nova's blockcopy + abort).
 */
import { resolve } from 'node:path';
import { SnapshotError } from './errors.js';
import type { DiskDefinition, DomainState, Hypervisor } from './hypervisor.js';
import { coldSnapshot } from './flows/cold.js';
import { samePath, type QuiesceMode, type SnapshotStep } from './flows/context.js';
import { mirrorSnapshot } from './flows/live-mirror.js';
import { overlaySnapshot } from './flows/live-overlay.js';
import { temporaryPath } from './intent/temporaries.js';
import { checkOption, openRun, prepareRun, type RunOptions, type SnapshotMode } from './run.js';
import type { OutputFormat } from './write-image.js';

export type LiveMethod = 'overlay' | 'mirror';
export type { QuiesceMode, SnapshotStep, SnapshotMode };

/** The live method used when none is asked for (measured faster, and it needs no copy of the disk). */
export const DEFAULT_LIVE_METHOD: LiveMethod = 'overlay';

export interface SnapshotOptions extends RunOptions {
  /** The image to write (created, or replaced once the new one is whole). */
  output: string;
  method?: LiveMethod;
  /** The disk's target ('vda'); default the domain's first disk, as nova. */
  disk?: string;
}

export interface SnapshotResult {
  domain: string;
  disk: string;
  /** The disk's active image when the snapshot started. */
  diskPath: string;
  mode: 'live' | 'cold';
  method: LiveMethod | undefined;
  /** The guest's state before (and, after a successful snapshot, after). */
  state: DomainState;
  quiesced: boolean;
  output: string;
  format: OutputFormat;
  notes: string[];
  durationMs: number;
}

/** The disk nova would take: the one with this target, or the first disk (not a cdrom or floppy). */
export function chooseDisk(disks: readonly DiskDefinition[], target: string | undefined, domain: string): DiskDefinition {
  if (target !== undefined) {
    const disk = disks.find((d) => d.target === target);
    if (disk === undefined) {
      throw new SnapshotError('NO_SUCH_DISK', `domain ${domain} has no disk ${target} (it has: ${disks.map((d) => d.target).join(', ') || 'none'})`, { domain });
    }
    return disk;
  }
  const disk = disks.find((d) => d.device === 'disk' && d.chain[0]?.path !== undefined) ?? disks.find((d) => d.device === 'disk');
  if (disk === undefined) throw new SnapshotError('NO_SUCH_DISK', `domain ${domain} has no disk`, { domain });
  return disk;
}

export async function snapshotDomain(hypervisor: Hypervisor, options: SnapshotOptions): Promise<SnapshotResult> {
  const started = Date.now();
  checkOption(options.method, ['overlay', 'mirror'], 'method');
  if (options.output === '') throw new SnapshotError('BAD_ARGUMENT', 'no output file');
  const run = await prepareRun(hypervisor, options);
  const { info, live } = run;
  const domain = options.domain;
  const disks = await hypervisor.disks(domain);
  const disk = chooseDisk(disks, options.disk, domain);
  const output = resolve(options.output);
  // Before anything changes: the output must not be one of the images the disk is made of.
  for (const layer of disk.chain) {
    if (layer.path !== undefined && (await samePath(layer.path, output))) {
      throw new SnapshotError('BAD_ARGUMENT', `the output ${output} is an image of disk ${disk.target} (${layer.path})`, { domain });
    }
  }
  const method = live ? (options.method ?? DEFAULT_LIVE_METHOD) : undefined;
  const context = await openRun(hypervisor, run, options, method ?? 'cold', disks, [{ disk, output: { path: output, partial: temporaryPath(output, 'partial') } }]);
  if (method === 'overlay') await overlaySnapshot(context);
  else if (method === 'mirror') await mirrorSnapshot(context);
  else await coldSnapshot(context);
  return {
    domain,
    disk: disk.target,
    diskPath: disk.chain[0]?.path ?? '',
    mode: live ? 'live' : 'cold',
    method,
    state: info.state,
    quiesced: live && context.quiesce !== 'off' && !context.notes.some((n) => n.startsWith('not quiesced')),
    output,
    format: run.format,
    notes: context.notes,
    durationMs: Date.now() - started,
  };
}
