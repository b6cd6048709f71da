import type { Command } from 'commander';
import { Qcow2Device, Qcow2Error, combinePath, createQcow2, validateCreateOptions } from '@qcowkit/qcow2/engine';
import { createCloudImage } from './create-cloud.js';
import { isCloudFormat } from '../output/cloud-image-options.js';
import { FileStorage, openImageFile } from '@qcowkit/qcow2/node';
import { CommandError, printWarning } from '../output/errors.js';
import { formattingLine, parseImageOptions } from '../output/image-options.js';
import { cvtnumBytes } from '../parse/qemu-size.js';
import { parseFormatFlag } from './open.js';

interface CreateFlags {
  format?: string;
  backing?: string;
  backingFormat?: string;
  unsafe?: boolean;
  options?: string;
  quiet?: boolean;
}

/** Size of the image a new overlay sits on: its backing file's virtual size (qemu-img create -b without SIZE). */
async function backingSize(filename: string, backing: string, format: string): Promise<number> {
  // qemu-img create reads the backing file's size without locking it (a running guest may use it).
  const device = await openImageFile(combinePath(filename, backing), { format: parseFormatFlag(format) ?? 'raw', forceShare: true });
  try {
    return device.size;
  } finally {
    await device.close();
  }
}

export function registerCreate(program: Command): void {
  program
    .command('create')
    .description('create a new disk image FILE of SIZE bytes')
    .argument('<filename>')
    .argument('[size]')
    .option('-f, --format <fmt>', 'image format (qcow2, raw, vpc, vmdk or vhdx)', 'raw')
    .option('-b, --backing <backing_file>', 'backing file (relative names resolve against the new image)')
    .option('-F, --backing-format <fmt>', 'format of the backing file')
    .option('-u, --unsafe', 'do not open the backing file (its size must then be given)')
    .option('-o, --options <options>', 'comma-separated format options (cluster_size, refcount_bits, compat, …)')
    .option('-q, --quiet', 'quiet mode')
    .action(async (filename: string, sizeText: string | undefined, flags: CreateFlags) => {
      try {
        await create(filename, sizeText, flags);
      } catch (error) {
        // qemu-img names the image on every create error line.
        if (error instanceof CommandError && error.file === undefined) throw new CommandError(error.message, error.exitCode, filename);
        if (error instanceof Qcow2Error) throw error.withFile(filename);
        throw error;
      }
    });
}

async function create(filename: string, sizeText: string | undefined, flags: CreateFlags): Promise<void> {
    const format = parseFormatFlag(flags.format) ?? 'raw';
    if (isCloudFormat(format)) return createCloudImage(filename, sizeText, format, flags);
    if (format !== 'raw' && format !== 'qcow2') throw new CommandError(`Unknown file format '${format}'`);
    const options = parseImageOptions(flags.options, format);
    const q = options.qcow2;
    if (flags.backing !== undefined) q.backingFile = flags.backing;
    if (flags.backingFormat !== undefined) q.backingFormat = flags.backingFormat;
    if (q.backingFile !== undefined && format === 'raw') throw new CommandError("Backing file not supported for file format 'raw'");
    if (q.backingFile !== undefined && q.backingFormat === undefined) {
      throw new CommandError('Backing file specified without backing format', 1, filename);
    }
    let size = sizeText === undefined ? options.size : cvtnumBytes('image size', sizeText, printWarning);
    if (q.backingFile !== undefined && !flags.unsafe) {
      // Like qemu-img: the backing file must open (and gives the size when none is given).
      let known: number;
      const backingPath = combinePath(filename, q.backingFile);
      try {
        known = await backingSize(filename, q.backingFile, q.backingFormat!);
      } catch (error) {
        throw new CommandError(`Could not open '${backingPath}': ${(error as Error).message}`, 1, filename);
      }
      size ??= known;
    }
    if (size === undefined) throw new CommandError('Image creation needs a size parameter');
    // qemu-img prints the Formatting line, then refuses wrong options before creating anything.
    if (!flags.quiet) process.stdout.write(`${formattingLine(filename, format, size, options)}\n`);
    if (format === 'qcow2') validateCreateOptions({ ...q, size });

    const storage = await FileStorage.open(filename, { create: true });
    try {
      if (format === 'raw') {
        // qemu sizes raw images in whole 512-byte sectors.
        size = Math.ceil(size / 512) * 512;
        await storage.truncate(size);
        if (options.preallocation === 'full' || options.preallocation === 'falloc') {
          const zeros = new Uint8Array(Math.min(size, 4 * 1024 * 1024));
          for (let at = 0; at < size; at += zeros.length) await storage.write(zeros.subarray(0, Math.min(zeros.length, size - at)), at);
        }
        return;
      }
      await createQcow2(storage, { ...q, size });
    } finally {
      await storage.close();
    }
    if (q.dataFile !== undefined) {
      // qemu-img creates the external data file too, sized to the disk.
      const data = await FileStorage.open(combinePath(filename, q.dataFile), { create: true });
      try {
        await data.truncate(Math.ceil(size / 512) * 512);
      } finally {
        await data.close();
      }
    }
    // data_file_raw needs every cluster mapped, so the data file reads as the disk (qemu preallocates metadata).
    const preallocation = options.preallocation === 'off' && q.dataFileRaw ? 'metadata' : options.preallocation;
    if (preallocation !== 'off') {
      const device = await openImageFile(filename, { format: 'qcow2', writable: true, openBacking: false });
      try {
        if (!(device instanceof Qcow2Device)) throw new CommandError('internal: created image is not qcow2');
        await device.preallocate(preallocation);
      } finally {
        await device.close();
      }
    }
}
