import type { Command } from 'commander';
import { Qcow2Device, RawDevice } from '@qcowkit/qcow2/engine';
import { openImageFile } from '@qcowkit/qcow2/node';
import { CommandError, printWarning } from '../output/errors.js';
import { optionSizeBytes } from '../parse/qemu-size.js';
import { parseFormatFlag, withDevice } from './open.js';

/** qemu-img resize [--shrink] [-f FMT] FILE [+|-]SIZE: grows freely, shrinks only when told to. */
export function registerResize(program: Command): void {
  program
    .command('resize')
    .description('change the virtual size of image FILE')
    .argument('<filename>')
    .argument('<size>', 'new size, or +SIZE / -SIZE relative to the current one')
    .option('-f, --format <fmt>', 'image format')
    .option('--shrink', 'allow shrinking (data past the new end is lost)')
    .option('-q, --quiet', 'quiet mode')
    .allowUnknownOption(false)
    .action(async (filename: string, sizeText: string, flags: { format?: string; shrink?: boolean; quiet?: boolean }) => {
      const format = parseFormatFlag(flags.format);
      const device = await openImageFile(filename, { ...(format === undefined ? {} : { format }), writable: true, resize: true, openBacking: true });
      await withDevice(device, async () => {
        const sign = sizeText.startsWith('+') ? 1 : sizeText.startsWith('-') ? -1 : 0;
        const amount = optionSizeBytes('size', sign === 0 ? sizeText : sizeText.slice(1), printWarning);
        const newSize = sign === 0 ? amount : device.size + sign * amount;
        if (newSize < 0) throw new CommandError('New image size must be positive');
        if (newSize < device.size && !flags.shrink) {
          process.stderr.write(
            "qemu-img: warning: Shrinking an image will delete all data beyond the shrunken image's end. Before performing such an operation, make sure there is no important data there.\n",
          );
          throw new CommandError('Use the --shrink option to perform a shrink operation.');
        }
        if (device instanceof Qcow2Device) {
          if (newSize % 512 !== 0) throw new CommandError('The new size must be a multiple of 512');
          await device.resize(newSize);
        } else if (device instanceof RawDevice) {
          await device.resize(newSize);
        }
        if (!flags.quiet) process.stdout.write('Image resized.\n');
      });
    });
}
