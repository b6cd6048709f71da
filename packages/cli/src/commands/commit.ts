import type { Command } from 'commander';
import { commitImage } from '@qcowkit/qcow2/engine';
import { nodeCodecs, nodeHostFiles } from '@qcowkit/qcow2/node';
import { addProgressOptions, progressReporter, type ProgressFlags } from '../output/progress.js';
import { parseFormatFlag } from './open.js';

interface CommitFlags extends ProgressFlags {
  format?: string;
  base?: string;
  drop?: boolean;
  quiet?: boolean;
}

/**
 * qemu-img commit: writes the overlay's data into its backing file (or, with -b, into a deeper image through
 * every layer between), then empties the overlay unless -d. -b implies -d, as in qemu-img. Prints
 * "Image committed." like qemu-img; errors exit 1.
 */
export function registerCommit(program: Command): void {
  const command = program
    .command('commit')
    .description("commit the changes recorded in FILE into its backing file (or into BASE, deeper in the chain)")
    .argument('<filename>')
    .option('-f, --format <fmt>', 'format of FILE (probed when absent)')
    .option('-b, --base <base>', 'the image in the backing chain to commit into (implies -d)')
    .option('-d, --drop', 'do not empty FILE after the commit')
    .option('-q, --quiet', 'quiet mode')
    .option('-t, --cache <mode>', 'cache mode (accepted for compatibility: the base is always flushed before FILE is emptied)');
  addProgressOptions(command).action(async (filename: string, flags: CommitFlags) => {
    const format = parseFormatFlag(flags.format);
    const progress = progressReporter('commit', flags);
    await commitImage(filename, {
      hostFiles: nodeHostFiles,
      codecs: nodeCodecs,
      ...(format === undefined ? {} : { format }),
      ...(flags.base === undefined ? {} : { base: flags.base }),
      ...(flags.drop ? { drop: true } : {}),
      onProgress: progress.update,
    });
    progress.finish();
    if (!flags.quiet) process.stdout.write('Image committed.\n');
  });
}
