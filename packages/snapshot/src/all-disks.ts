/**
 * snapshotAllDisks: every disk of a guest at one instant — for a guest whose data spans disks (a database with
 * its data on a second disk), one disk at a time would give a set taken at different instants. Live, one
 * disk-only external snapshot of all the disks in one libvirt call (one QEMU transaction), quiesced once when
 * asked; then each disk's chain is converted and its overlay merged back (the overlay flow, for several disks).
 * Cold, the guest is saved once and every disk converted. Writes OUTDIR/<target>.qcow2 (or .raw) per disk and,
 * last, OUTDIR/manifest.json: per disk its target, source, format, virtual size and output file, and the
 * instant. CD-ROMs, floppies, read-only and non-local disks are left out (and named in the notes).
 */
import { mkdir, open, rename } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { SnapshotError } from './errors.js';
import type { DiskDefinition, DomainState, Hypervisor } from './hypervisor.js';
import { coldSnapshot } from './flows/cold.js';
import type { DiskJob, FlowContext, SnapshotInstant } from './flows/context.js';
import { overlaySnapshot } from './flows/live-overlay.js';
import { syncDirectory } from './flows/outputs.js';
import { temporaryPath } from './intent/temporaries.js';
import { openRun, prepareRun, type RunOptions } from './run.js';
import type { OutputFormat } from './write-image.js';

export interface AllDisksOptions extends RunOptions {
  /** Receives <target>.qcow2 (or .raw) per disk and manifest.json; created if missing. */
  outputDir: string;
}

export interface ManifestDisk {
  target: string;
  /** The disk's image when the snapshot was taken (the top of its chain). */
  source: string;
  /** The source image's format, as libvirt states it. */
  format: string | undefined;
  virtualSize: number;
  /** The output file, relative to the manifest's directory. */
  output: string;
  outputFormat: OutputFormat;
}

export interface SnapshotManifest {
  domain: string;
  uuid: string;
  mode: 'live' | 'cold';
  method: 'overlay' | undefined;
  quiesced: boolean;
  /** The disks hold the guest's writes up to one moment between `instantNotBefore` and `instant`. */
  instant: string;
  instantNotBefore: string;
  disks: ManifestDisk[];
}

export interface AllDisksResult {
  domain: string;
  mode: 'live' | 'cold';
  method: 'overlay' | undefined;
  state: DomainState;
  quiesced: boolean;
  outputDir: string;
  manifest: SnapshotManifest;
  manifestPath: string;
  notes: string[];
  durationMs: number;
}

/** The disks that can be snapshotted, and the others with why not. */
export function snapshotableDisks(disks: readonly DiskDefinition[]): { taken: DiskDefinition[]; leftOut: string[] } {
  const taken: DiskDefinition[] = [];
  const leftOut: string[] = [];
  for (const disk of disks) {
    const top = disk.chain[0];
    let why: string | undefined;
    if (disk.device !== 'disk') why = disk.device;
    else if (disk.readonly) why = 'read-only';
    else if (top?.path === undefined || (top.type !== 'file' && top.type !== 'block')) why = `${top?.type ?? 'no'} source`;
    if (why === undefined) taken.push(disk);
    else leftOut.push(`${disk.target} (${why})`);
  }
  return { taken, leftOut };
}

async function writeManifest(context: FlowContext, outputDir: string, manifest: () => SnapshotManifest): Promise<void> {
  const path = join(outputDir, 'manifest.json');
  const partial = temporaryPath(path, 'partial');
  await context.intent.update({ outputs: [...context.intent.record.outputs, { path, partial }] });
  const handle = await open(partial, 'wx', 0o644);
  try {
    await handle.writeFile(`${JSON.stringify(manifest(), null, 2)}\n`);
    await handle.sync();
  } finally {
    await handle.close();
  }
  await rename(partial, path);
  await syncDirectory(outputDir);
}

export async function snapshotAllDisks(hypervisor: Hypervisor, options: AllDisksOptions): Promise<AllDisksResult> {
  const started = Date.now();
  if (options.outputDir === '') throw new SnapshotError('BAD_ARGUMENT', 'no output directory');
  const run = await prepareRun(hypervisor, options);
  const { info, live } = run;
  const domain = options.domain;
  const disks = await hypervisor.disks(domain);
  const { taken, leftOut } = snapshotableDisks(disks);
  if (taken.length === 0) throw new SnapshotError('NO_SUCH_DISK', `domain ${domain} has no disk to snapshot${leftOut.length > 0 ? ` (left out: ${leftOut.join(', ')})` : ''}`, { domain });
  const outputDir = resolve(options.outputDir);
  await mkdir(outputDir, { recursive: true });
  const extension = run.format === 'raw' ? 'raw' : 'qcow2';
  const jobs: DiskJob[] = taken.map((disk) => {
    const path = join(outputDir, `${disk.target}.${extension}`);
    return { disk, output: { path, partial: temporaryPath(path, 'partial') } };
  });
  const method = live ? ('overlay' as const) : undefined;
  const context = await openRun(hypervisor, run, { ...options, tempDir: options.tempDir ?? outputDir }, live ? 'all-disks' : 'cold', disks, jobs);
  if (leftOut.length > 0) context.notes.push(`left out: ${leftOut.join(', ')}`);
  const quiesced = (): boolean => live && context.quiesce !== 'off' && !context.notes.some((n) => n.startsWith('not quiesced'));
  const manifest = (): SnapshotManifest => {
    const instant: SnapshotInstant = context.instant ?? { notBefore: new Date(started).toISOString(), at: new Date(started).toISOString() };
    return {
      domain: info.name,
      uuid: info.uuid,
      mode: live ? 'live' : 'cold',
      method,
      quiesced: quiesced(),
      instant: instant.at,
      instantNotBefore: instant.notBefore,
      disks: jobs.map((job) => ({
        target: job.disk.target,
        source: job.disk.chain[0]!.path!,
        format: job.disk.chain[0]!.format,
        virtualSize: job.virtualSize ?? 0,
        output: `${job.disk.target}.${extension}`,
        outputFormat: run.format,
      })),
    };
  };
  context.afterPublish = () => writeManifest(context, outputDir, manifest);
  if (live) await overlaySnapshot(context);
  else await coldSnapshot(context);
  return {
    domain,
    mode: live ? 'live' : 'cold',
    method,
    state: info.state,
    quiesced: quiesced(),
    outputDir,
    manifest: manifest(),
    manifestPath: join(outputDir, 'manifest.json'),
    notes: context.notes,
    durationMs: Date.now() - started,
  };
}
