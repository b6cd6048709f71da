import type { Command } from 'commander';
import { createQcow2, ddCopy, ddPlan, isWritable, type DdOptions } from '@qcowkit/qcow2/engine';
import { FileStorage, openImageFile } from '@qcowkit/qcow2/node';
import { CommandError, printWarning } from '../output/errors.js';
import { addProgressOptions, progressReporter, type ProgressFlags } from '../output/progress.js';
import { cvtnumBytes } from '../parse/qemu-size.js';
import { FORCE_SHARE_OPTION, openForReading, withDevice } from './open.js';

interface DdFlags extends ProgressFlags {
  format?: string;
  outputFormat?: string;
  untrusted?: boolean;
  forceShare?: boolean;
}

interface DdOperands extends DdOptions {
  input?: string;
  output?: string;
}

const INT_MAX = 2147483647;

/** The if=, of=, bs=, count=, skip= operands, parsed in order with qemu-img's messages. */
function parseOperands(operands: string[]): DdOperands {
  const parsed: DdOperands = { blockSize: 512 };
  for (const operand of operands) {
    const eq = operand.indexOf('=');
    const name = eq < 0 ? operand : operand.slice(0, eq);
    const value = operand.slice(eq + 1);
    if (eq < 0) throw new CommandError(`unrecognized operand ${operand}`);
    switch (name) {
      case 'bs': {
        parsed.blockSize = cvtnumBytes('bs', value, printWarning, { min: 1n, max: BigInt(INT_MAX) });
        break;
      }
      case 'count':
        parsed.count = cvtnumBytes('count', value, printWarning);
        break;
      case 'skip':
        parsed.skip = cvtnumBytes('skip', value, printWarning);
        break;
      case 'if':
        parsed.input = value;
        break;
      case 'of':
        parsed.output = value;
        break;
      default:
        throw new CommandError(`unrecognized operand ${name}`);
    }
  }
  return parsed;
}

/**
 * qemu-img dd [-f FMT] [-O raw|qcow2] [bs=N] [count=N] [skip=N] if=INPUT of=OUTPUT: copies a range of a disk's
 * blocks into a new image (created, or recreated, with the copied size). As in qemu-img, count= counts from the
 * start of the input, and a skip= past the end makes an empty output with a warning (exit 0).
 */
export function registerDd(program: Command): void {
  const command = program
    .command('dd')
    .description('copy blocks of an image into a new raw or qcow2 image, dd style (if=, of=, bs=, count=, skip=)')
    .argument('<operands...>', 'if=INPUT of=OUTPUT [bs=BLOCK_SIZE] [count=BLOCKS] [skip=BLOCKS]')
    .option('-f, --format <fmt>', 'input format (probed when absent)')
    .option('-O, --output-format <fmt>', 'output format: raw (default) or qcow2', 'raw')
    .option(FORCE_SHARE_OPTION[0], 'open the input even if another process (a running guest) writes it')
    .option('--untrusted', 'refuse backing and data file references of the input');
  addProgressOptions(command).action(async (operands: string[], flags: DdFlags) => {
    const dd = parseOperands(operands);
    if (dd.input === undefined || dd.output === undefined) throw new CommandError('Must specify both input and output files');
    const output = dd.output;
    const source = await openForReading(dd.input, flags);
    await withDevice(source, async () => {
      const outputFormat = flags.outputFormat === 'raw' || flags.outputFormat === 'qcow2' ? flags.outputFormat : undefined;
      if (outputFormat === undefined) throw new CommandError('Unknown file format');
      const plan = ddPlan(source.size, dd);
      const storage = await FileStorage.open(output, { create: true });
      try {
        if (outputFormat === 'qcow2') await createQcow2(storage, { size: plan.length });
        else await storage.truncate(Math.ceil(plan.length / 512) * 512);
      } finally {
        await storage.close();
      }
      if (plan.skipPastEnd) process.stderr.write(`qcowkit: ${dd.input}: cannot skip to specified offset\n`);
      const target = await openImageFile(output, { format: outputFormat, writable: true, openBacking: false });
      await withDevice(target, async () => {
        if (!isWritable(target)) throw new CommandError('internal: output is not writable');
        const progress = progressReporter('dd', flags);
        progress.update(0, plan.length);
        await ddCopy(source, target, plan, dd.blockSize, progress.update);
        progress.finish();
      });
    });
  });
}


