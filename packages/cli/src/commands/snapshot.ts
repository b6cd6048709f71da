import type { Command } from 'commander';
import { Qcow2Device, Qcow2Error, openImageForInfo, snapshotInfos, type BlockDevice, type ImageFormat } from '@qcowkit/qcow2/engine';
import { nodeHostFiles, openImageFile } from '@qcowkit/qcow2/node';
import { CommandError } from '../output/errors.js';
import { formatSnapshotList } from '../output/info-human.js';
import { FORCE_SHARE_OPTION, parseFormatFlag, refuseForceShareForWriting, withDevice } from './open.js';

/**
 * qemu-img snapshot: one action per run, chosen by -l, -c, -a or -d (qemu refuses to mix them, or to give one
 * twice). Without any, qemu-img opens the image and does nothing; so does qcowkit.
 *
 * -l only reads metadata; -c, -a and -d open the image for writing.
 */
export type SnapshotAction =
  | { kind: 'none' }
  | { kind: 'list' }
  | { kind: 'create'; name: string }
  | { kind: 'apply'; name: string }
  | { kind: 'delete'; name: string };

export interface SnapshotContext {
  filename: string;
  format: ImageFormat | undefined;
  quiet: boolean;
  /** -U: allowed for -l (and no action) only, as in qemu-img. */
  forceShare?: boolean;
}

interface SnapshotFlags {
  list: number;
  create: string[];
  apply: string[];
  delete: string[];
  format?: string;
  quiet?: boolean;
  forceShare?: boolean;
}

function openMetadata(context: SnapshotContext): Promise<BlockDevice> {
  // qemu-img snapshot -l opens the image to read (not info's metadata-only open): it locks as a reader.
  return openImageForInfo(context.filename, {
    hostFiles: nodeHostFiles,
    ...(context.format === undefined ? {} : { format: context.format }),
    ...(context.forceShare ? { forceShare: true } : {}),
    lockAsReader: true,
  });
}

/** Opens the image for writing (its backing chain read-only) and runs `body` on it as qcow2. */
async function withWritableQcow2(context: SnapshotContext, verb: string, name: string, body: (device: Qcow2Device) => Promise<unknown>): Promise<void> {
  refuseForceShareForWriting(context, context.filename);
  const device = await openImageFile(context.filename, { ...(context.format === undefined ? {} : { format: context.format }), writable: true });
  await withDevice(device, async () => {
    if (!(device instanceof Qcow2Device)) throw new CommandError(`Could not ${verb} snapshot '${name}': -95 (Operation not supported)`);
    try {
      await body(device);
    } catch (error) {
      if (error instanceof Qcow2Error) {
        const reason =
          error.code === 'SNAPSHOT_NOT_FOUND'
            ? verb === 'apply'
              ? 'Failed to load snapshot: No such file or directory'
              : 'snapshot not found'
            : error.message;
        throw new CommandError(`Could not ${verb} snapshot '${name}': ${reason}`, 1, context.filename);
      }
      throw error;
    }
  });
}

export const snapshotActions: { [K in SnapshotAction['kind']]: (action: Extract<SnapshotAction, { kind: K }>, context: SnapshotContext) => Promise<void> } = {
  async none(_action, context) {
    const device = await openMetadata(context);
    await device.close();
  },
  async list(_action, context) {
    // Like qemu-img: nothing at all (not even the header) when there are no snapshots, or for a raw image.
    const device = await openMetadata(context);
    await withDevice(device, async () => {
      const snapshots = snapshotInfos(device);
      if (snapshots.length > 0) process.stdout.write(formatSnapshotList(snapshots));
    });
  },
  async create(action, context) {
    await withWritableQcow2(context, 'create', action.name, (device) => device.createSnapshot({ name: action.name }));
  },
  async apply(action, context) {
    await withWritableQcow2(context, 'apply', action.name, (device) => device.applySnapshot(action.name));
  },
  async delete(action, context) {
    await withWritableQcow2(context, 'delete', action.name, (device) => device.deleteSnapshot(action.name));
  },
};

/** The one action the flags ask for; qemu's "Cannot mix" error when they ask for more. */
export function parseSnapshotAction(flags: Pick<SnapshotFlags, 'list' | 'create' | 'apply' | 'delete'>): SnapshotAction {
  const actions: SnapshotAction[] = [
    ...Array.from({ length: flags.list }, (): SnapshotAction => ({ kind: 'list' })),
    ...flags.create.map((name): SnapshotAction => ({ kind: 'create', name })),
    ...flags.apply.map((name): SnapshotAction => ({ kind: 'apply', name })),
    ...flags.delete.map((name): SnapshotAction => ({ kind: 'delete', name })),
  ];
  if (actions.length > 1) throw new CommandError("Cannot mix '-l', '-a', '-c', '-d'");
  return actions[0] ?? { kind: 'none' };
}

function runAction(action: SnapshotAction, context: SnapshotContext): Promise<void> {
  switch (action.kind) {
    case 'none': return snapshotActions.none(action, context);
    case 'list': return snapshotActions.list(action, context);
    case 'create': return snapshotActions.create(action, context);
    case 'apply': return snapshotActions.apply(action, context);
    case 'delete': return snapshotActions.delete(action, context);
  }
}

const collect = (value: string, previous: string[]): string[] => [...previous, value];
const count = (_value: unknown, previous: number): number => previous + 1;

export function registerSnapshot(program: Command): void {
  program
    .command('snapshot')
    .description('list, create, apply or delete internal snapshots of image FILE')
    .argument('<filename>')
    .option('-l, --list', 'list all snapshots', count, 0)
    .option('-c, --create <snapshot>', 'create a snapshot', collect, [])
    .option('-a, --apply <snapshot>', 'revert the disk to a snapshot', collect, [])
    .option('-d, --delete <snapshot>', 'delete a snapshot', collect, [])
    .option('-f, --format <fmt>', 'image format (probed when absent)')
    .option('-q, --quiet', 'quiet mode')
    .option(FORCE_SHARE_OPTION[0], 'with -l: list even if another process (a running guest) writes the image')
    .action(async (filename: string, opts: SnapshotFlags) => {
      const action = parseSnapshotAction(opts);
      await runAction(action, { filename, format: parseFormatFlag(opts.format), quiet: opts.quiet === true, forceShare: opts.forceShare === true });
    });
}
