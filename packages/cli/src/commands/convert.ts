import type { Command } from 'commander';
import { ConcatDevice, Qcow2Device, clearQcow2Target, clearRawTarget, convertToQcow2, convertToRaw, createQcow2, layerPermissions, validateCreateOptions, type BlockDevice } from '@qcowkit/qcow2/engine';
import { compressionTypeName } from '@qcowkit/qcow2/format';
import { FileStorage, clusterCompressor, openImageFile } from '@qcowkit/qcow2/node';
import { CommandError } from '../output/errors.js';
import { collectingGarbage } from './garbage-pacer.js';
import { parseImageOptions } from '../output/image-options.js';
import { addProgressOptions, progressReporter, type ProgressFlags } from '../output/progress.js';
import { convertCopySettings, salvaged, type ConvertCopyFlags, type ConvertCopySettings } from './convert-flags.js';
import { checkBitmapCopy, copyBitmaps, type ConvertBitmapFlags } from './convert-bitmaps.js';
import { PIPE, checkPipeOutput, convertToStdout, spoolStandardInput } from './convert-pipe.js';
import { FORCE_SHARE_OPTION, openForReading, parseFormatFlag, withDevice } from './open.js';
import { convertIntoCloudFormat, creationError } from './convert-cloud.js';
import { isCloudFormat } from '../output/cloud-image-options.js';

interface ConvertFlags extends ProgressFlags, ConvertCopyFlags, ConvertBitmapFlags {
  format?: string;
  outputFormat?: string;
  options?: string;
  compress?: boolean;
  snapshot?: string;
  snapshotOption?: string;
  cache?: string;
  backingFile?: string;
  backingFormat?: string;
  untrusted?: boolean;
  forceShare?: boolean;
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

/** What qemu-img convert holds on a raw target while writing it: read and write, sharing everything. */
const RAW_TARGET = layerPermissions('raw', 'top', { write: true });

async function convertIntoQcow2(
  source: BlockDevice,
  outputFilename: string,
  flags: ConvertFlags,
  settings: ConvertCopySettings,
  onProgress: (done: number, total: number) => void,
): Promise<void> {
  const options = parseImageOptions(flags.options, 'qcow2');
  if (flags.backingFile !== undefined) options.qcow2.backingFile = flags.backingFile;
  if (flags.backingFormat !== undefined) options.qcow2.backingFormat = flags.backingFormat;
  if (!flags.noCreate) {
    // Refused before the target exists, in qemu-img's words for a failed creation.
    try {
      validateCreateOptions({ ...options.qcow2, size: source.size });
    } catch (error) {
      throw creationError(error, 'qcow2', outputFilename);
    }
    const storage = await FileStorage.open(outputFilename, { create: true });
    try {
      await createQcow2(storage, { ...options.qcow2, size: source.size });
    } finally {
      await storage.close();
    }
  }
  const target = await openImageFile(outputFilename, { format: 'qcow2', writable: true, cache: cacheMode(flags) });
  await withDevice(target, async () => {
    if (!(target instanceof Qcow2Device)) throw new CommandError('internal: output is not qcow2');
    if (flags.noCreate && target.size < source.size) throw new CommandError('output file is smaller than input file');
    if (settings.clearTarget) await clearQcow2Target(target, source.size);
    if (options.preallocation !== 'off') await target.preallocate(options.preallocation);
    const compress = flags.compress ? clusterCompressor(compressionTypeName(target.image.layout.compressionType), target.image.clusterSize) : undefined;
    // With -B the new image sits on that backing file: write only what differs from it.
    const backing = options.qcow2.backingFile !== undefined ? target.backing : undefined;
    await convertToQcow2(source, target, {
      ...(compress === undefined ? {} : { compress }),
      ...(backing === undefined ? {} : { backing }),
      ...(settings.rateLimiter === undefined ? {} : { rateLimiter: settings.rateLimiter }),
      sparseSize: settings.sparseSize,
      ...(settings.parallel === undefined ? {} : { parallel: settings.parallel }),
      outOfOrder: settings.outOfOrder,
      onProgress,
    });
  });
}

const CACHE_MODES = ['unsafe', 'writeback', 'writethrough', 'none', 'directsync'];

/** qemu-img convert defaults to -t unsafe: no flush. Every other mode ends with the data on stable storage. */
function cacheMode(flags: ConvertFlags): 'writeback' | 'unsafe' {
  const mode = flags.cache ?? 'unsafe';
  if (!CACHE_MODES.includes(mode)) throw new CommandError(`Invalid cache option: ${mode}`);
  return mode === 'unsafe' ? 'unsafe' : 'writeback';
}

export function registerConvert(program: Command): void {
  const command = program
    .command('convert')
    .description('convert an image (raw, qcow2, a chain, or a snapshot of one) into a standalone raw or qcow2 image')
    .argument('<filenames...>', 'source image(s), then the output file')
    .option('-f, --format <fmt>', 'source format')
    .option('-B, --backing-file <backing_file>', 'the output gets this backing file; only what differs from it is written')
    .option('-F, --backing-format <fmt>', 'format of the -B backing file')
    .option('-n, --no-create', 'do not create the output (it must exist, e.g. made by create)')
    .requiredOption('-O, --output-format <fmt>', 'output format (raw, qcow2, vpc, vmdk or vhdx)')
    .option('-o, --options <options>', 'output format options (cluster_size, refcount_bits, compat, compression_type, …)')
    .option('-c, --compress', 'write compressed clusters (qcow2 output)')
    .option('-s, --snapshot <id_or_name>', 'convert the disk as it was at this internal snapshot')
    .option('-l, --snapshot-option <snapshot.name=NAME>', 'convert the disk as it was at this internal snapshot')
    .option('-S, --sparse-size <size>', 'minimum zero run left as a hole (default 4k; 0 writes everything)', '4k')
    .option('--target-is-zero', 'with -n: the existing output reads as zeros, so zeros need not be written')
    .option('-r, --rate-limit <rate>', 'write at most RATE bytes per second (k, M, G suffixes)')
    .option('--salvage', 'read unreadable parts of the source as zeros, with a warning for each sector, and go on')
    .option('-m, --parallel <num_coroutines>', 'requests in flight, 1 to 16 (default 8, as qemu-img)')
    .option('-W, --out-of-order', 'write chunks as soon as they are read, not in guest order (the output layout then varies)')
    .option('--bitmaps', "copy the source's persistent dirty bitmaps (qcow2 to qcow2)")
    .option('--skip-broken-bitmaps', 'with --bitmaps: skip bitmaps left inconsistent (in use) instead of failing')
    .option('-q, --quiet', 'quiet mode')
    .option('-t, --cache <mode>', "output cache mode: 'unsafe' (default, as qemu-img convert: no fsync) or writeback/writethrough/none/directsync (fsync at the end)", 'unsafe')
    .option('-T, --source-cache <mode>', 'source cache mode (accepted for compatibility; reads are always through the page cache)')
    .option(FORCE_SHARE_OPTION[0], 'open the sources even if another process (a running guest) writes them')
    .option('--untrusted', 'refuse backing and data file references of the source');
  addProgressOptions(command).action(async (filenames: string[], flags: ConvertFlags & { create?: boolean }) => {
    if (filenames.length < 2) throw new CommandError('Expecting one image file name and an output file name');
    const outputFilename = filenames[filenames.length - 1]!;
    const sources = filenames.slice(0, -1);
    const filename = sources[0]!;
    flags.noCreate = flags.create === false;
    const outputFormat = parseFormatFlag(flags.outputFormat);
    if (outputFormat === undefined) throw new CommandError('-O is required');
    // qemu's vmdk driver takes compressed writes (a stream-optimized one compresses anyway; a sparse one ignores -c).
    if (flags.compress && outputFormat !== 'qcow2' && outputFormat !== 'vmdk') throw new CommandError("Compression not supported for this file format");
    if (isCloudFormat(outputFormat) && flags.noCreate) throw new CommandError(`-n is not supported with -O ${outputFormat}: qcowkit writes ${outputFormat} images only as new files`);
    const settings = convertCopySettings(flags);
    if (flags.backingFile !== undefined && outputFormat !== 'qcow2') throw new CommandError('-B needs qcow2 output');
    const toStdout = outputFilename === PIPE;
    if (toStdout && isCloudFormat(outputFormat)) throw new CommandError(`-O ${outputFormat} cannot be written to standard output`);
    if (toStdout) checkPipeOutput(flags, outputFormat === 'qcow2' ? parseImageOptions(flags.options, 'qcow2') : undefined);
    if (sources.includes(PIPE) && sources.length > 1) throw new CommandError('standard input (-) can only be the one source');
    const opened: BlockDevice[] = [];
    try {
      for (const name of sources) opened.push(name === PIPE ? await spoolStandardInput(flags.format) : await openForReading(name, { ...flags, refuseWriters: true }));
    } catch (error) {
      for (const device of opened) await device.close();
      throw error;
    }
    const source = opened.length === 1 ? opened[0]! : new ConcatDevice(opened);
    try {
      const v2 = outputFormat === 'qcow2' && !flags.noCreate && parseImageOptions(flags.options, 'qcow2').qcow2.compat === '0.10';
      await checkBitmapCopy(flags, opened, { format: outputFormat, v2, toStdout });
    } catch (error) {
      await source.close();
      throw error;
    }
    await withDevice(source, async () => {
      const selector = snapshotSelector(flags);
      const view = salvaged(selector === undefined ? source : await snapshotView(source, selector, filename), flags);
      const progress = progressReporter('convert', flags, toStdout);
      progress.update(0, view.size);
      // Compressing makes garbage buffers as fast as it copies: collected as the copy advances (bounded memory).
      const update = flags.compress ? collectingGarbage(progress.update) : progress.update;
      if (toStdout && !isCloudFormat(outputFormat)) {
        const options = parseImageOptions(flags.options, outputFormat);
        const compress = flags.compress ? clusterCompressor(options.qcow2.compressionType ?? 'zlib', options.qcow2.clusterSize ?? 65536) : undefined;
        await convertToStdout(view, outputFormat, options, { sparseSize: settings.sparseSize, ...(compress === undefined ? {} : { compress }), ...(settings.rateLimiter === undefined ? {} : { rateLimiter: settings.rateLimiter }) }, update);
      } else if (outputFormat === 'qcow2') {
        await convertIntoQcow2(view, outputFilename, flags, settings, update);
        if (flags.bitmaps) await copyBitmaps(source, outputFilename, flags.quiet === true);
      } else if (isCloudFormat(outputFormat)) {
        await convertIntoCloudFormat(view, outputFilename, outputFormat, { ...flags, settings, flush: cacheMode(flags) === 'writeback' }, update);
      } else {
        if (flags.options !== undefined) parseImageOptions(flags.options, 'raw');
        // Created under qemu's create locks, then held as qemu-img convert holds a raw target (read, write).
        const target = await FileStorage.open(outputFilename, flags.noCreate ? { writable: true, permissions: RAW_TARGET } : { create: true });
        try {
          await target.setPermissions(RAW_TARGET);
          if (flags.noCreate && (await target.size()) < view.size) throw new CommandError('output file is smaller than input file');
          if (settings.clearTarget) await clearRawTarget(target, view.size);
          await convertToRaw(view, target, {
            sparseSize: settings.sparseSize,
            onProgress: update,
            flush: cacheMode(flags) === 'writeback',
            keepTarget: flags.noCreate === true,
            ...(settings.parallel === undefined ? {} : { parallel: settings.parallel }),
            outOfOrder: settings.outOfOrder,
            ...(settings.rateLimiter === undefined ? {} : { rateLimiter: settings.rateLimiter }),
          });
        } finally {
          await target.close();
        }
      }
      progress.finish();
    });
  });
}

