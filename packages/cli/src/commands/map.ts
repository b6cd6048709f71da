import type { Command } from 'commander';
import { mapImage, type MapEntry } from '@qcowkit/qcow2/engine';
import { CommandError, printWarning } from '../output/errors.js';
import { cvtnumBytes } from '../parse/qemu-size.js';
import { FORCE_SHARE_OPTION, openForReading, withDevice } from './open.js';
import { BufferedOutput } from '../output/buffered-output.js';
import { parseOutputFormat } from '../output/output-format.js';

/** One JSON line as qemu-img map prints it (its own compact format, not the pretty printer). */
function jsonLine(entry: MapEntry): string {
  const offset = entry.offset === undefined ? '' : `, "offset": ${entry.offset}`;
  return `{ "start": ${entry.start}, "length": ${entry.length}, "depth": ${entry.depth}, "present": ${entry.present}, "zero": ${entry.zero}, "data": ${entry.data}${offset}}`;
}

/** C's %#-15x: "0" for zero, 0x-prefixed hex otherwise, left-aligned in 15 columns. */
function hexColumn(value: number): string {
  return (value === 0 ? '0' : `0x${value.toString(16)}`).padEnd(15);
}

export function registerMap(program: Command): void {
  program
    .command('map')
    .description('dump the metadata of image FILE and its backing chain')
    .argument('<filename>')
    .option('-f, --format <fmt>', 'image format')
    .option('--output <fmt>', 'human or json', 'human')
    .option('--start-offset <offset>', 'first byte to map', '0')
    .option('--max-length <length>', 'bytes to map')
    .option(...FORCE_SHARE_OPTION)
    .option('--untrusted', 'refuse backing and data file references (for images from untrusted sources)')
    .action(async (filename: string, opts: { format?: string; output: string; startOffset: string; maxLength?: string; untrusted?: boolean; forceShare?: boolean }) => {
      const output = parseOutputFormat(opts.output);
      // qemu-img map reads both numbers before it opens the image.
      const start = cvtnumBytes('start offset', opts.startOffset, printWarning);
      const maxLength = opts.maxLength === undefined ? undefined : cvtnumBytes('max length', opts.maxLength, printWarning);
      const device = await openForReading(filename, opts);
      await withDevice(device, async () => {
        const length = maxLength === undefined ? device.size - Math.min(start, device.size) : Math.min(maxLength, device.size - start);
        const out = new BufferedOutput();
        try {
          if (output === 'json') {
            let first = true;
            for await (const entry of mapImage(device, Math.min(start, device.size), Math.max(0, length))) {
              out.write(`${first ? '[' : ',\n'}${jsonLine(entry)}`);
              first = false;
            }
            out.write(first ? '[]\n' : ']\n');
            return;
          }
          out.write(`${'Offset'.padEnd(16)}${'Length'.padEnd(16)}${'Mapped to'.padEnd(16)}File\n`);
          for await (const entry of mapImage(device, Math.min(start, device.size), Math.max(0, length))) {
            if (!entry.data) continue;
            if (entry.offset === undefined) {
              throw new CommandError('File contains external, encrypted or compressed clusters.');
            }
            out.write(`${hexColumn(entry.start)} ${hexColumn(entry.length)} ${hexColumn(entry.offset)} ${entry.filename ?? filename}\n`);
          }
        } finally {
          out.flush();
        }
      });
    });
}
