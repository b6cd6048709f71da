import type { Command } from 'commander';
import { rebaseImage } from '@qcowkit/qcow2/engine';
import { nodeCodecs, nodeHostFiles } from '@qcowkit/qcow2/node';
import { CommandError } from '../output/errors.js';
import { addProgressOptions, progressReporter, type ProgressFlags } from '../output/progress.js';
import { FORCE_SHARE_OPTION, parseFormatFlag } from './open.js';

interface RebaseFlags extends ProgressFlags {
  format?: string;
  backing?: string;
  backingFormat?: string;
  unsafe?: boolean;
  quiet?: boolean;
  forceShare?: boolean;
}

/**
 * qemu-img rebase: changes FILE's backing file. Safe mode (default) first copies into FILE every cluster whose
 * visible contents would change, so the guest reads the same; -u only rewrites the reference (for a backing
 * file that was moved or renamed). -b "" makes FILE standalone. -F is required with a backing file, as qemu-img
 * 7.2 requires it; unlike qemu-img, that is checked before anything is copied.
 */
export function registerRebase(program: Command): void {
  const command = program
    .command('rebase')
    .description("change the backing file of FILE (safe: the guest contents stay the same; -u: only the reference)")
    .argument('<filename>')
    .option('-f, --format <fmt>', 'format of FILE (probed when absent)')
    .option('-b, --backing <backing_file>', 'the new backing file, stored as given ("" = none)')
    .option('-F, --backing-format <fmt>', 'format of the new backing file (raw or qcow2)')
    .option('-u, --unsafe', 'only rewrite the backing file reference')
    .option('-q, --quiet', 'quiet mode')
    .option('-t, --cache <mode>', 'cache mode (accepted for compatibility: FILE is flushed before its reference changes)')
    .option('-T, --source-cache <mode>', 'cache mode of the backing files (accepted for compatibility)')
    .option(FORCE_SHARE_OPTION[0], 'open the new backing file even if another process (a running guest) writes it');
  addProgressOptions(command).action(async (filename: string, flags: RebaseFlags) => {
    if (flags.backing === undefined && !flags.unsafe) {
      throw new CommandError('Must specify backing file (-b) or use unsafe mode (-u)');
    }
    const format = parseFormatFlag(flags.format);
    const backingFormat = parseFormatFlag(flags.backingFormat);
    const progress = progressReporter('rebase', flags);
    await rebaseImage(filename, {
      hostFiles: nodeHostFiles,
      codecs: nodeCodecs,
      backing: flags.backing ?? '',
      ...(format === undefined ? {} : { format }),
      ...(backingFormat === undefined ? {} : { backingFormat }),
      ...(flags.unsafe ? { unsafe: true } : {}),
      ...(flags.forceShare ? { forceShare: true } : {}),
      onProgress: progress.update,
    });
    progress.finish();
  });
}
