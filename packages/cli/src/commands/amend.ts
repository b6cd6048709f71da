import type { Command } from 'commander';
import { Qcow2Device, Qcow2Error, amendImage, type AmendOptions } from '@qcowkit/qcow2/engine';
import { openImageFile } from '@qcowkit/qcow2/node';
import { CommandError } from '../output/errors.js';
import { addProgressOptions, progressReporter, type ProgressFlags } from '../output/progress.js';
import { optionBool, optionPairs } from '../parse/option-list.js';
import { optionSizeBytes } from '../parse/qemu-size.js';
import { parseFormatFlag } from './open.js';

interface AmendFlags extends ProgressFlags {
  options?: string;
  format?: string;
  cache?: string;
  force?: boolean;
}

/** Options qcow2 accepts at creation only: qemu names them in its refusal. */
const CREATE_ONLY = new Set(['cluster_size', 'preallocation', 'extended_l2', 'compression_type', 'encryption', 'encrypt.format', 'encrypt.key-secret', 'encrypt.cipher-alg', 'encrypt.cipher-mode', 'encrypt.ivgen-alg', 'encrypt.ivgen-hash-alg', 'encrypt.hash-alg', 'encrypt.iter-time']);
const ENCRYPT_AMEND = new Set(['encrypt.keyslot', 'encrypt.new-secret', 'encrypt.old-secret', 'encrypt.state']);

/** What `-o help` lists: the options amend takes for qcow2, in qemu's order. */
const AMEND_HELP: Array<[string, string]> = [
  ['backing_file=<str>', 'only the current backing file (to change it, use rebase)'],
  ['backing_fmt=<str>', 'only the current backing format'],
  ['compat=<str>', '0.10 (v2) or 1.1 (v3): downgrade or upgrade the image'],
  ['data_file=<str>', 'new name of the external data file'],
  ['data_file_raw=<bool (on/off)>', 'off: the data file need no longer stay a raw image'],
  ['lazy_refcounts=<bool (on/off)>', 'set or clear the lazy refcounts feature'],
  ['refcount_bits=<num>', 'refcount entry width (1, 2, 4, 8, 16, 32 or 64): the refcount structures are rewritten'],
  ['size=<size>', 'new virtual disk size'],
];

/** Parses "-o key=value,…" as qemu's QemuOpts does for amend (",," escapes a comma; a bare key means on). */
export function parseAmendOptions(text: string): AmendOptions | 'help' {
  const options: AmendOptions = {};
  for (const [key, value] of optionPairs(text)) {
    if (key === 'help' || key === '?') return 'help';
    switch (key) {
      case 'size':
        options.size = optionSizeBytes(key, value);
        break;
      case 'compat':
        options.compat = value;
        break;
      case 'backing_file':
        options.backingFile = value;
        break;
      case 'backing_fmt':
        options.backingFormat = value;
        break;
      case 'data_file':
        options.dataFile = value;
        break;
      case 'data_file_raw':
        options.dataFileRaw = optionBool(key, value);
        break;
      case 'lazy_refcounts':
        options.lazyRefcounts = optionBool(key, value);
        break;
      case 'refcount_bits':
        if (!/^\d+$/.test(value)) throw new CommandError(`Parameter '${key}' expects a number`);
        options.refcountBits = Number(value);
        break;
      default:
        if (ENCRYPT_AMEND.has(key)) {
          options.encrypt = true;
          break;
        }
        throw new CommandError(`Invalid parameter '${key}'${CREATE_ONLY.has(key) ? '\nThis option is only supported for image creation' : ''}`);
    }
  }
  return options;
}

const CACHE_MODES = ['unsafe', 'writeback', 'writethrough', 'none', 'directsync'];

/**
 * qemu-img amend [-p] [-q] [-f fmt] [-t cache] [--force] -o options FILE: changes a qcow2 image's options in
 * place — compat (upgrade, or downgrade to 0.10 with its zero clusters expanded), refcount_bits (the refcount
 * structures rebuilt and switched in one header write), lazy_refcounts, size, data file options. Every option is
 * checked before anything is written (qemu refuses some only after writing others).
 */
export function registerAmend(program: Command): void {
  const command = program
    .command('amend')
    .description("change the format options of qcow2 image FILE (compat, refcount_bits, lazy_refcounts, size…)")
    .argument('[filename]')
    .option('-o, --options <options>', 'the options to change (-o help lists them); may be given more than once', (value: string, previous?: string) => (previous === undefined ? value : `${previous},${value}`))
    .option('-f, --format <fmt>', 'image format (only qcow2 has options to amend)')
    .option('-t, --cache <mode>', 'cache mode (every change is flushed in order whatever the mode)', 'writeback')
    .option('--force', 'accepted for compatibility (it only concerns encryption options)')
    .option('-q, --quiet', 'quiet mode');
  addProgressOptions(command).action(async (filename: string | undefined, flags: AmendFlags) => {
    if (flags.options === undefined) throw new CommandError("Must specify options (-o)\nTry 'qemu-img --help' for more information");
    const format = parseFormatFlag(flags.format);
    const parsed = parseAmendOptions(flags.options);
    if (parsed === 'help' && (format !== undefined || filename !== undefined)) {
      if (format === 'raw') throw new CommandError("Format driver 'raw' does not support option amendment");
      process.stdout.write(`Amend options for 'qcow2':\n${AMEND_HELP.map(([o, h]) => `  ${o.padEnd(22)} - ${h}\n`).join('')}`);
      return;
    }
    if (filename === undefined) throw new CommandError('Expecting one image file name');
    if (!CACHE_MODES.includes(flags.cache ?? 'writeback')) throw new CommandError(`Invalid cache option: ${flags.cache}`);
    if (parsed === 'help') return;
    const reopen = async (): Promise<Qcow2Device> => {
      const device = await openImageFile(filename, { ...(format === undefined ? {} : { format }), writable: true });
      if (!(device instanceof Qcow2Device)) {
        await device.close();
        throw new CommandError(`Format driver '${device.format}' does not support option amendment`);
      }
      return device;
    };
    const progress = progressReporter('amend', flags);
    try {
      await amendImage(reopen, parsed, { onProgress: progress.update });
    } catch (error) {
      // qemu-img prints amend's refusals without the file name.
      if (error instanceof Qcow2Error && error.code === 'BAD_ARGUMENT') throw new CommandError(error.message);
      throw error;
    }
    progress.finish();
  });
}
