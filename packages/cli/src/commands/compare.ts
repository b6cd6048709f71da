import type { Command } from 'commander';
import { compareDevices } from '@qcowkit/qcow2/engine';
import { CommandError } from '../output/errors.js';
import { addProgressOptions, progressReporter, type ProgressFlags } from '../output/progress.js';
import { FORCE_SHARE_OPTION, openForReading, withDevice } from './open.js';

/** qemu-img compare: exit 0 identical, 1 different, 2 on errors (opening, reading). */
export function registerCompare(program: Command): void {
  const command = program
    .command('compare')
    .description('check if two images have the same content')
    .argument('<filename1>')
    .argument('<filename2>')
    .option('-f, --format <fmt>', 'format of the first image')
    .option('-F, --second-format <fmt>', 'format of the second image')
    .option('-s, --strict', 'strict mode: sizes and allocation must match too')
    .option('-q, --quiet', 'quiet mode')
    .option(...FORCE_SHARE_OPTION)
    .option('--untrusted', 'refuse backing and data file references');
  addProgressOptions(command).action(
    async (filename1: string, filename2: string, opts: ProgressFlags & { format?: string; secondFormat?: string; strict?: boolean; untrusted?: boolean; forceShare?: boolean }) => {
      const say = (line: string): void => {
        if (!opts.quiet) process.stdout.write(`${line}\n`);
      };
      const open = async (name: string, format: string | undefined) => {
        try {
          return await openForReading(name, { ...(format === undefined ? {} : { format }), ...(opts.untrusted ? { untrusted: true } : {}), ...(opts.forceShare ? { forceShare: true } : {}) });
        } catch (error) {
          throw new CommandError(`Could not open '${name}': ${(error as Error).message}`, 2, name);
        }
      };
      const a = await open(filename1, opts.format);
      await withDevice(a, async () => {
        const b = await open(filename2, opts.secondFormat);
        await withDevice(b, async () => {
          const progress = progressReporter('compare', opts);
          progress.update(0, Math.max(a.size, b.size));
          let result;
          try {
            result = await compareDevices(a, b, { strict: opts.strict === true, onProgress: progress.update });
          } catch (error) {
            throw new CommandError((error as Error).message, 2, (error as { file?: string }).file);
          }
          progress.finish();
          if ('sizeMismatch' in result && result.sizeMismatch) say('Warning: Image size mismatch!');
          if (result.identical) {
            say('Images are identical.');
            return;
          }
          if (result.reason === 'size') say('Strict mode: Image size mismatch!');
          else if (result.reason === 'allocation') say(`Strict mode: Offset ${result.offset} block status mismatch!`);
          else say(`Content mismatch at offset ${result.offset}!`);
          process.exitCode = 1;
        });
      });
    },
  );
}
