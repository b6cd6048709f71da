import type { Command } from 'commander';
import { Qcow2Device, convertToRaw, type BlockDevice } from '@qcowkit/qcow2';
import { FileStorage } from '@qcowkit/qcow2/node';
import { CommandError } from '../output/errors.js';
import { progressPrinter } from '../output/progress.js';
import { parseSize } from '../output/sizes.js';
import { openForReading, withDevice } from './open.js';

interface ConvertFlags {
  format?: string;
  outputFormat?: string;
  snapshot?: string;
  snapshotOption?: string;
  sparseSize?: string;
  progress?: boolean;
  untrusted?: boolean;
}

/** -l takes "snapshot.name=NAME", "snapshot.id=ID" or a bare id-or-name, like qemu-img. */
function snapshotSelector(flags: ConvertFlags): string | undefined {
  if (flags.snapshotOption !== undefined) {
    const match = /^snapshot\.(name|id)=(.*)$/.exec(flags.snapshotOption);
    return match ? match[2] : flags.snapshotOption;
  }
  return flags.snapshot;
}

async function snapshotView(device: BlockDevice, selector: string, filename: string): Promise<BlockDevice> {
  if (!(device instanceof Qcow2Device)) throw new CommandError(`Failed to load snapshot: snapshots are only supported on qcow2 images`, 1, filename);
  const snapshot = device.image.findSnapshot(selector);
  if (snapshot === undefined) throw new CommandError(`Failed to load snapshot: Can't find snapshot`, 1, filename);
  return device.snapshotView(snapshot);
}

export function registerConvert(program: Command): void {
  program
    .command('convert')
    .description('convert an image (raw output for now; qcow2 output comes with the write path)')
    .argument('<filename>')
    .argument('<output_filename>')
    .option('-f, --format <fmt>', 'source format')
    .requiredOption('-O, --output-format <fmt>', 'output format')
    .option('-s, --snapshot <id_or_name>', 'convert the disk as it was at this internal snapshot')
    .option('-l, --snapshot-option <snapshot.name=NAME>', 'convert the disk as it was at this internal snapshot')
    .option('-S, --sparse-size <size>', 'minimum zero run left as a hole (default 4k; 0 writes everything)', '4k')
    .option('-p, --progress', 'show progress')
    .option('-U, --force-share', 'open the source even if in use (always: qcowkit takes no locks)')
    .option('--untrusted', 'refuse backing and data file references of the source')
    .action(async (filename: string, outputFilename: string, flags: ConvertFlags) => {
      if (flags.outputFormat !== 'raw') throw new CommandError(`output format '${flags.outputFormat}' is not supported yet (use -O raw)`);
      const sparseSize = parseSize(flags.sparseSize ?? '4k');
      const source = await openForReading(filename, flags);
      await withDevice(source, async () => {
        const selector = snapshotSelector(flags);
        const view = selector === undefined ? source : await snapshotView(source, selector, filename);
        const target = await FileStorage.open(outputFilename, { create: true });
        const progress = progressPrinter(flags.progress === true);
        try {
          await convertToRaw(view, target, { sparseSize, onProgress: progress.update });
        } finally {
          await target.close();
        }
        progress.finish();
      });
    });
}
