import type { Command } from 'commander';
import { backingChain, imageInfo, openImageForInfo, untrustedGate } from '@qcowkit/qcow2/engine';
import { nodeHostFiles } from '@qcowkit/qcow2/node';
import { formatImageInfo, formatImageInfoList } from '../output/info-human.js';
import { printWarning } from '../output/errors.js';
import { qemuJson } from '../output/json.js';
import { parseOutputFormat } from '../output/output-format.js';
import { FORCE_SHARE_OPTION, parseFormatFlag, withDevice } from './open.js';

interface InfoFlags {
  format?: string;
  output: string;
  backingChain?: boolean;
  forceShare?: boolean;
  untrusted?: boolean;
}

/**
 * qemu-img info: the image's metadata, never its data. Like qemu-img, only the named file is opened (a
 * missing backing or external data file does not matter); --backing-chain opens each backing file in turn.
 */
export function registerInfo(program: Command): void {
  program
    .command('info')
    .description('display information about the disk image FILE')
    .argument('<filename>')
    .option('-f, --format <fmt>', 'image format (probed when absent)')
    .option('--output <fmt>', 'human or json', 'human')
    .option('--backing-chain', 'also display the backing chain')
    .option(...FORCE_SHARE_OPTION)
    .option('--untrusted', 'refuse to follow backing file references (with --backing-chain)')
    .action(async (filename: string, opts: InfoFlags) => {
      const output = parseOutputFormat(opts.output);
      const format = parseFormatFlag(opts.format);
      const device = await openImageForInfo(filename, {
        hostFiles: nodeHostFiles,
        ...(format === undefined ? {} : { format }),
        ...(opts.backingChain ? { backingChain: true } : {}),
        ...(opts.untrusted ? { gate: untrustedGate } : {}),
        ...(opts.forceShare ? { forceShare: true } : {}),
      });
      await withDevice(device, async () => {
        let text: string;
        if (opts.backingChain) {
          const infos = await backingChain(device, { warn: printWarning });
          text = output === 'json' ? `${qemuJson(infos)}\n` : formatImageInfoList(infos);
        } else {
          const info = await imageInfo(device, { warn: printWarning });
          text = output === 'json' ? `${qemuJson(info)}\n` : formatImageInfo(info);
        }
        process.stdout.write(text);
      });
    });
}
