/**
 * snapshotDomain: one disk of a libvirt guest into a standalone image, the way nova's libvirt driver decides —
 * live while the guest runs (or is paused) on QEMU/KVM, cold otherwise — with two live methods: 'overlay'
 * (default: a temporary external snapshot, one read pass, no copy) and 'mirror' (nova's blockcopy + abort).
 */
import { dirname, resolve } from 'node:path';
import { SnapshotError } from './errors.js';
import { isQemuDomain, type DiskDefinition, type DomainState, type Hypervisor } from './hypervisor.js';
import { coldSnapshot } from './flows/cold.js';
import { samePath, type FlowContext, type QuiesceMode, type SnapshotStep } from './flows/context.js';
import { mirrorSnapshot } from './flows/live-mirror.js';
import { overlaySnapshot } from './flows/live-overlay.js';
import type { OutputFormat } from './write-image.js';

export type SnapshotMode = 'auto' | 'live' | 'cold';
export type LiveMethod = 'overlay' | 'mirror';
export type { QuiesceMode, SnapshotStep };

/** The live method used when none is asked for (measured faster, and it needs no copy of the disk). */
export const DEFAULT_LIVE_METHOD: LiveMethod = 'overlay';

export interface SnapshotOptions {
  domain: string;
  /** The image to write (created or overwritten). */
  output: string;
  /** auto (default): live when the guest runs or is paused on QEMU/KVM, cold otherwise. */
  mode?: SnapshotMode;
  method?: LiveMethod;
  /** The disk's target ('vda'); default the domain's first disk, as nova. */
  disk?: string;
  /** Freeze the guest's file systems through the agent: off (default), try (go on without), require. */
  quiesce?: QuiesceMode;
  /** Output format, qcow2 (default) or raw. */
  format?: OutputFormat;
  /** Compressed qcow2 clusters (zlib). */
  compress?: boolean;
  /** Where the temporary delta or overlay goes; default the output's directory (QEMU must be able to reach it). */
  tempDir?: string;
  onProgress?: (done: number, total: number) => void;
  onStep?: (step: SnapshotStep) => void;
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

function check<T extends string>(value: T | undefined, allowed: readonly T[], what: string): void {
  if (value !== undefined && !allowed.includes(value)) throw new SnapshotError('BAD_ARGUMENT', `${what} must be one of ${allowed.join(', ')} (got '${value}')`);
}

export async function snapshotDomain(hypervisor: Hypervisor, options: SnapshotOptions): Promise<SnapshotResult> {
  const started = Date.now();
  check(options.mode, ['auto', 'live', 'cold'], 'mode');
  check(options.method, ['overlay', 'mirror'], 'method');
  check(options.quiesce, ['off', 'try', 'require'], 'quiesce');
  check(options.format, ['qcow2', 'raw'], 'output format');
  const format = options.format ?? 'qcow2';
  if (options.compress && format !== 'qcow2') throw new SnapshotError('BAD_ARGUMENT', 'compression needs qcow2 output');
  if (options.output === '') throw new SnapshotError('BAD_ARGUMENT', 'no output file');
  const onStep = options.onStep ?? (() => {});
  const domain = options.domain;

  onStep('inspect');
  const info = await hypervisor.domainInfo(domain);
  const active = info.state === 'running' || info.state === 'paused';
  if (!active && info.state !== 'shutoff') {
    throw new SnapshotError('INVALID_STATE', `domain ${domain} is ${info.state}: only running, paused or shut-off guests can be snapshotted`, { domain });
  }
  const mode = options.mode ?? 'auto';
  let live: boolean;
  if (mode === 'auto') live = active && isQemuDomain(info);
  else if (mode === 'live') {
    if (!active) throw new SnapshotError('INVALID_STATE', `domain ${domain} is shut off: a live snapshot needs a running or paused guest (use --mode cold or auto)`, { domain });
    if (!isQemuDomain(info)) throw new SnapshotError('INVALID_STATE', `domain ${domain} runs on '${info.virtType}': live snapshots need QEMU/KVM (use --mode cold or auto)`, { domain });
    live = true;
  } else live = false;

  const disks = await hypervisor.disks(domain);
  const disk = chooseDisk(disks, options.disk, domain);
  const output = resolve(options.output);
  const context: FlowContext = {
    hypervisor,
    domain,
    info,
    disks,
    disk,
    output,
    format,
    compress: options.compress ?? false,
    quiesce: options.quiesce ?? 'off',
    tempDir: resolve(options.tempDir ?? dirname(output)),
    onProgress: options.onProgress,
    onStep,
    notes: [],
    outputCreated: false,
  };
  // Before anything changes: the output must not be one of the images the disk is made of.
  for (const layer of disk.chain) {
    if (layer.path !== undefined && (await samePath(layer.path, output))) {
      throw new SnapshotError('BAD_ARGUMENT', `the output ${output} is an image of disk ${disk.target} (${layer.path})`, { domain });
    }
  }
  const method = live ? (options.method ?? DEFAULT_LIVE_METHOD) : undefined;
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
    format,
    notes: context.notes,
    durationMs: Date.now() - started,
  };
}
