import type { Command } from 'commander';
import { checkStorage, layerPermissions, Qcow2Device, Qcow2Error, repairStorage, type CheckMessage, type CheckReport, type RepairMode, type Storage } from '@qcowkit/qcow2/engine';
import { nodeHostFiles, openImageFile } from '@qcowkit/qcow2/node';
import { BufferedOutput } from '../output/buffered-output.js';
import { CommandError } from '../output/errors.js';
import { qemuJson } from '../output/json.js';
import { parseOutputFormat, type OutputFormat } from '../output/output-format.js';
import { checkFormatDevice, repairBeforeOpen } from './check-format.js';
import { FORCE_SHARE_OPTION, parseFormatFlag, refuseForceShareForWriting, withDevice } from './open.js';

interface CheckFlags {
  format?: string;
  output: string;
  repair?: string;
  quiet?: boolean;
  forceShare?: boolean;
}

/** C's "%0.2f" as glibc prints it: the exact binary value, halfway cases to even (toFixed rounds them up). */
export function percent2(value: number): string {
  const eighths = value * 8;
  if (Number.isInteger(eighths) && eighths % 2 === 1) {
    // Exactly halfway between two hundredths (value = j/8, j odd).
    const lower = Math.floor(value * 100);
    const hundredths = lower % 2 === 0 ? lower : lower + 1;
    return `${Math.floor(hundredths / 100)}.${String(hundredths % 100).padStart(2, '0')}`;
  }
  return value.toFixed(2);
}

/** qemu-img's ImageCheck object; optional members only when non-zero, as qemu fills them. */
interface ImageCheckJson {
  filename: string;
  format: string;
  'check-errors': number;
  'image-end-offset'?: number;
  corruptions?: number;
  leaks?: number;
  'corruptions-fixed'?: number;
  'leaks-fixed'?: number;
  'total-clusters'?: number;
  'allocated-clusters'?: number;
  'fragmented-clusters'?: number;
  'compressed-clusters'?: number;
}

/**
 * The members in the order qemu-img prints them: its JSON writer walks a QDict, whose order is that of the
 * key hashes (tdb_hash modulo 512), not the order of the schema.
 */
const JSON_ORDER: Array<keyof ImageCheckJson> = [
  'image-end-offset',
  'compressed-clusters',
  'total-clusters',
  'corruptions',
  'corruptions-fixed',
  'check-errors',
  'leaks',
  'leaks-fixed',
  'allocated-clusters',
  'filename',
  'format',
  'fragmented-clusters',
];

export function checkJson(report: CheckReport, filename: string): string {
  const nonZero = (n: number): number | undefined => (n === 0 ? undefined : n);
  const members: ImageCheckJson = {
    filename,
    format: report.format,
    'check-errors': report.checkErrors,
    'image-end-offset': nonZero(report.imageEndOffset),
    corruptions: nonZero(report.corruptions),
    leaks: nonZero(report.leaks),
    'corruptions-fixed': nonZero(report.corruptionsFixed),
    'leaks-fixed': nonZero(report.leaksFixed),
    'total-clusters': nonZero(report.totalClusters),
    'allocated-clusters': nonZero(report.allocatedClusters),
    'fragmented-clusters': nonZero(report.fragmentedClusters),
    'compressed-clusters': nonZero(report.compressedClusters),
  };
  const ordered: Record<string, unknown> = {};
  for (const key of JSON_ORDER) ordered[key] = members[key];
  return `${qemuJson(ordered)}\n`;
}

/** qemu-img's dump_human_image_check. */
export function checkHuman(report: CheckReport): string {
  let out = '';
  if (report.corruptions === 0 && report.leaks === 0 && report.checkErrors === 0) {
    out += 'No errors were found on the image.\n';
  } else {
    if (report.corruptions !== 0) {
      out += `\n${report.corruptions} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n`;
    }
    if (report.leaks !== 0) {
      out += `\n${report.leaks} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n`;
    }
    if (report.checkErrors !== 0) out += `\n${report.checkErrors} internal errors have occurred during the check.\n`;
  }
  if (report.totalClusters !== 0 && report.allocatedClusters !== 0) {
    out +=
      `${report.allocatedClusters}/${report.totalClusters} = ${percent2((report.allocatedClusters * 100) / report.totalClusters)}% allocated, ` +
      `${percent2((report.fragmentedClusters * 100) / report.allocatedClusters)}% fragmented, ` +
      `${percent2((report.compressedClusters * 100) / report.allocatedClusters)}% compressed clusters\n`;
  }
  if (report.imageEndOffset !== 0) out += `Image end offset: ${report.imageEndOffset}\n`;
  return out;
}

export function parseRepairMode(value: string | undefined): RepairMode | undefined {
  if (value === undefined) return undefined;
  if (value === 'leaks' || value === 'all') return value;
  throw new CommandError(`Unknown option value for -r (expecting 'leaks' or 'all'): ${value}`);
}

/** Exit status as qemu-img check: 1 check incomplete, 2 corruptions, 3 leaks only, 0 clean. */
function finish(report: CheckReport, filename: string, output: OutputFormat, quiet: boolean, fixed?: CheckReport): number {
  if (report.failure !== undefined) throw new CommandError(`Check failed: ${report.failure}`, 1);
  const shown = fixed === undefined ? report : { ...report, leaksFixed: fixed.leaksFixed, corruptionsFixed: fixed.corruptionsFixed };
  if (!quiet) process.stdout.write(output === 'json' ? checkJson(shown, filename) : checkHuman(shown));
  if (report.checkErrors !== 0) throw new CommandError('Check failed', 1);
  return report.corruptions !== 0 ? 2 : report.leaks !== 0 ? 3 : 0;
}

/**
 * Check messages go to stderr as qemu-img prints them, but in large writes: a hostile image can make a check
 * report hundreds of thousands of lines, and one write per line cost more than the check itself.
 */
const messages = new BufferedOutput(256 * 1024, process.stderr);

function printMessage(message: CheckMessage): void {
  messages.write(`${message.text}\n`);
}

/**
 * Errors of Qcow2Image.open that qemu-img check gets past: qemu opens an image for checking without reading its
 * snapshot table, then examines the table (and the snapshots' L1 tables) itself. The check reads the file on its
 * own, so it can too.
 */
function checkReadsPast(error: unknown): boolean {
  return error instanceof Qcow2Error && (error.structure === 'snapshot-table' || error.structure === 'snapshot-l1-table');
}

async function withFile<T>(filename: string, writable: boolean, forceShare: boolean, body: (storage: Storage) => Promise<T>): Promise<T> {
  const storage = await nodeHostFiles.open(filename, { writable });
  try {
    // Locked as qemu-img check locks the image: a reader, or a writer with -r.
    await storage.setPermissions?.(layerPermissions('qcow2', 'top', { write: writable, forceShare }));
    return await body(storage);
  } finally {
    messages.flush();
    await storage.close();
  }
}

/**
 * qemu-img check [-f FMT] [--output human|json] [-r leaks|all] [-q] [-U] FILE. The image is opened with its
 * backing chain and data file as qemu-img opens it (a missing one fails the check, exit 1); the check itself
 * then reads the image file alone, and a repair writes it below the writer, so an image left dirty by a crash
 * (which the writer refuses) can be repaired.
 */
export function registerCheck(program: Command): void {
  program
    .command('check')
    .description('perform a consistency check on the disk image FILE')
    .argument('<filename>')
    .option('-f, --format <fmt>', 'image format (probed when absent)')
    .option('--output <fmt>', 'human or json', 'human')
    .option('-r, --repair <mode>', "repair inconsistencies: 'leaks' (leaked clusters only) or 'all'")
    .option('-q, --quiet', 'quiet mode')
    .option(...FORCE_SHARE_OPTION)
    .action(async (filename: string, opts: CheckFlags) => {
      const output = parseOutputFormat(opts.output);
      const mode = parseRepairMode(opts.repair);
      const format = parseFormatFlag(opts.format);
      const quiet = opts.quiet === true;
      const forceShare = opts.forceShare === true;
      if (mode !== undefined) refuseForceShareForWriting(opts, filename);
      try {
        // -r on a VHDX: qemu opens it for writing, which replays its log first.
        const corruptionsFixed = mode === undefined ? 0 : await repairBeforeOpen(filename, format);
        // forCheck: a VHDX whose blocks point past its end opens, for check to report them (qemu's BDRV_O_CHECK).
        const device = await openImageFile(filename, {
          ...(format === undefined ? {} : { format }),
          ...(forceShare ? { forceShare } : {}),
          ...(mode === undefined ? {} : { lockWrite: true }),
          forCheck: true,
        });
        if (!(device instanceof Qcow2Device)) {
          const repair = mode === undefined ? undefined : { corruptionsFixed };
          const report = await withDevice(device, () => checkFormatDevice(device, filename, repair, (line) => process.stderr.write(`${line}\n`)));
          if (corruptionsFixed > 0 && output === 'human' && !quiet) {
            process.stdout.write(
              'The following inconsistencies were found and repaired:\n\n    0 leaked clusters\n' + `    ${corruptionsFixed} corruptions\n\nDouble checking the fixed image now...\n`,
            );
          }
          process.exitCode = finish(report, filename, output, quiet, report);
          return;
        }
        await device.close();
      } catch (error) {
        if (!checkReadsPast(error)) throw error;
      }
      if (mode === undefined) {
        const report = await withFile(filename, false, forceShare, (storage) => checkStorage(storage, { onMessage: printMessage }));
        process.exitCode = finish(report, filename, output, quiet);
        return;
      }
      const { repair, recheck } = await withFile(filename, true, false, (storage) => repairStorage(storage, mode, { onMessage: printMessage }));
      if (repair.failure !== undefined || recheck === undefined) {
        process.exitCode = finish(repair, filename, output, quiet);
        return;
      }
      if (output === 'human' && !quiet) {
        process.stdout.write(
          'The following inconsistencies were found and repaired:\n\n' +
            `    ${repair.leaksFixed} leaked clusters\n` +
            `    ${repair.corruptionsFixed} corruptions\n\n` +
            'Double checking the fixed image now...\n',
        );
      }
      process.exitCode = finish(recheck, filename, output, quiet, repair);
    });
}
