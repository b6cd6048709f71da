import type { Command } from 'commander';
import { Qcow2Device, measureImage, measureNewImage, type BlockDevice, type MeasureOptions, type MeasureResult } from '@qcowkit/qcow2/engine';
import { CommandError } from '../output/errors.js';
import { qemuJson } from '../output/json.js';
import { parseOutputFormat } from '../output/output-format.js';
import { FORCE_SHARE_OPTION, openForReading, withDevice } from './open.js';

/**
 * qemu-img measure: the size a new image would need, for an empty disk (--size N) or for the contents of FILE.
 * Options parse the way qemu-img measure parses them (QemuOpts, last value wins, qemu's messages); the
 * numbers come from the engine (ops/measure.ts).
 */

interface MeasureFlags {
  output: string;
  format?: string;
  outputFormat: string;
  options: string[];
  snapshotOption?: string;
  snapshot?: string;
  size?: string;
  untrusted?: boolean;
  forceShare?: boolean;
}

/** Formats qemu-img knows but cannot measure (only raw, qcow2 and luks measure in qemu). */
const QEMU_FORMATS = new Set([
  'blkdebug', 'blklogwrites', 'blkverify', 'bochs', 'cloop', 'compress', 'copy-before-write', 'copy-on-read', 'dmg', 'file',
  'ftp', 'ftps', 'gluster', 'host_cdrom', 'host_device', 'http', 'https', 'iscsi', 'iser', 'luks', 'nbd', 'nfs', 'null-aio',
  'null-co', 'nvme', 'parallels', 'preallocate', 'qcow', 'qed', 'quorum', 'rbd', 'replication', 'snapshot-access', 'ssh',
  'throttle', 'vdi', 'vhdx', 'vmdk', 'vpc', 'vvfat',
]);

// ---------------------------------------------------------------------------------------------------------
// Numbers as qemu reads them

const SIZE_SUFFIXES: Record<string, bigint> = { b: 1n, k: 1n << 10n, m: 1n << 20n, g: 1n << 30n, t: 1n << 40n, p: 1n << 50n, e: 1n << 60n };
const U64_MAX = (1n << 64n) - 1n;
const INT64_MAX = (1n << 63n) - 1n;

export class QemuSizeError extends Error {
  constructor(readonly reason: 'invalid' | 'range') {
    super(reason);
  }
}

/**
 * qemu's qemu_strtosz: a decimal integer (or 0x hex, which takes no fraction), an optional fraction, an optional
 * suffix b/k/M/G/T/P/E (binary multiples, any case); a fraction needs a suffix and rounds half up. Leading
 * white space is skipped; anything after the suffix is an error. Throws QemuSizeError.
 */
export function qemuStrtosz(text: string, warn?: (message: string) => void): bigint {
  const match = /^\s*(\+?)(0[xX][0-9a-fA-F]+|[0-9]+)(\.[0-9]*)?([bkmgtpeBKMGTPE]?)$/.exec(text);
  if (!match) throw new QemuSizeError('invalid');
  const [, , digits, fractionText, suffixText] = match as unknown as [string, string, string, string | undefined, string];
  const hex = /^0[xX]/.test(digits);
  if (hex && fractionText !== undefined) throw new QemuSizeError('invalid');
  const integer = BigInt(digits);
  if (integer > U64_MAX) throw new QemuSizeError('range');
  // strtod of ".ddd" gives the nearest double, as Number() does; qemu keeps it as a 64-bit binary fraction.
  const fraction = fractionText === undefined || fractionText === '.' ? 0 : Number(`0${fractionText}`);
  const fixedFraction = BigInt(Math.min(Math.trunc(fraction * 2 ** 64), 2 ** 64 - 1));
  const multiplier = suffixText === '' ? 1n : SIZE_SUFFIXES[suffixText.toLowerCase()]!;
  if (suffixText !== '' && multiplier !== 1n && hex) warn?.(`Using a multiplier suffix on hex numbers is deprecated: ${text}`);
  if (multiplier === 1n) {
    if (fixedFraction !== 0n) throw new QemuSizeError('invalid');
    return integer;
  }
  const scaledFraction = fixedFraction * multiplier;
  const value = integer * multiplier + (scaledFraction >> 64n) + ((scaledFraction >> 63n) & 1n);
  if (value > U64_MAX) throw new QemuSizeError('range');
  return value;
}

/** qemu-img's cvtnum("image size", …): a size between 0 and INT64_MAX, with qemu's two messages. */
export function parseImageSize(text: string, warn?: (message: string) => void): bigint {
  let value: bigint;
  try {
    value = qemuStrtosz(text, warn);
  } catch (error) {
    if (error instanceof QemuSizeError && error.reason === 'invalid') {
      throw new CommandError('Invalid image size specified. You may use k, M, G, T, P or E suffixes for kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.');
    }
    value = INT64_MAX + 1n;
  }
  if (value > INT64_MAX) throw new CommandError(`Invalid image size specified. Must be between 0 and ${INT64_MAX}.`);
  return value;
}

/** strtoull with base 0 (decimal, 0x hex, 0 octal), a minus sign wrapping around as C's does. */
function parseOptionNumber(name: string, value: string): bigint {
  const match = /^\s*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)$/.exec(value);
  if (!match) throw new CommandError(`Parameter '${name}' expects a number`);
  const digits = match[2]!;
  const magnitude = /^0[0-7]+$/.test(digits) ? BigInt(`0o${digits.slice(1)}`) : BigInt(digits);
  if (magnitude > U64_MAX) throw new CommandError(`Value '${value}' is too large for parameter '${name}'`);
  return match[1] === '-' ? BigInt.asUintN(64, -magnitude) : magnitude;
}

function parseOptionSize(name: string, value: string, warn: (message: string) => void): bigint {
  try {
    return qemuStrtosz(value, warn);
  } catch (error) {
    if (error instanceof QemuSizeError && error.reason === 'range') throw new CommandError(`Value '${value}' is out of range for parameter '${name}'`);
    throw new CommandError(`Parameter '${name}' expects a non-negative number below 2^64`);
  }
}

function parseOptionBool(name: string, value: string): boolean {
  if (['on', 'yes', 'true', 'y'].includes(value)) return true;
  if (['off', 'no', 'false', 'n'].includes(value)) return false;
  throw new CommandError(`Parameter '${name}' expects 'on' or 'off'`);
}

// ---------------------------------------------------------------------------------------------------------
// -o, as QemuOpts over the target format's creation options

type OptionType = 'size' | 'number' | 'bool' | 'string';

const FILE_OPTIONS: Record<string, OptionType> = { size: 'size', preallocation: 'string', nocow: 'bool', extent_size_hint: 'size' };
const QCOW2_OPTIONS: Record<string, OptionType> = {
  ...FILE_OPTIONS,
  compat: 'string',
  backing_file: 'string',
  backing_fmt: 'string',
  data_file: 'string',
  data_file_raw: 'bool',
  encryption: 'bool',
  'encrypt.format': 'string',
  'encrypt.key-secret': 'string',
  'encrypt.cipher-alg': 'string',
  'encrypt.cipher-mode': 'string',
  'encrypt.ivgen-alg': 'string',
  'encrypt.ivgen-hash-alg': 'string',
  'encrypt.hash-alg': 'string',
  'encrypt.iter-time': 'number',
  cluster_size: 'size',
  lazy_refcounts: 'bool',
  refcount_bits: 'number',
  compression_type: 'string',
  extended_l2: 'bool',
};

/** qemu-img's is_valid_option_list: not empty, no leading comma, no unpaired trailing comma. */
function isValidOptionList(text: string): boolean {
  if (text === '' || text.startsWith(',')) return false;
  const trailing = text.length - text.replace(/,+$/, '').length;
  return trailing % 2 === 0;
}

type ParsedValue = bigint | boolean | string;

/** Parses the accumulated -o strings into the last value given for each key, type-checked like QemuOpts. */
function parseMeasureOptions(lists: string[], format: 'qcow2' | 'raw', warn: (message: string) => void): Map<string, ParsedValue> {
  for (const list of lists) if (!isValidOptionList(list)) throw new CommandError(`Invalid option list: ${list}`);
  const known = format === 'qcow2' ? QCOW2_OPTIONS : FILE_OPTIONS;
  const values = new Map<string, ParsedValue>();
  if (lists.length === 0) return values;
  const parts = lists.join(',').replace(/,,/g, '\u0000').split(',').map((p) => p.replace(/\u0000/g, ','));
  for (const part of parts) {
    if (part === '') continue;
    const eq = part.indexOf('=');
    const key = eq < 0 ? part : part.slice(0, eq);
    const value = eq < 0 ? 'on' : part.slice(eq + 1);
    const type = known[key];
    if (type === undefined) throw new CommandError(`Invalid parameter '${key}'`);
    switch (type) {
      case 'size':
        values.set(key, parseOptionSize(key, value, warn));
        break;
      case 'number':
        values.set(key, parseOptionNumber(key, value));
        break;
      case 'bool':
        values.set(key, parseOptionBool(key, value));
        break;
      case 'string':
        values.set(key, value);
        break;
    }
  }
  return values;
}

/** The engine's options from -O and -o. Values the engine checks (cluster size, compat…) pass through as given. */
export function measureOptionsOf(format: 'qcow2' | 'raw', lists: string[], warn: (message: string) => void = () => {}): MeasureOptions {
  const values = parseMeasureOptions(lists, format, warn);
  const options: MeasureOptions = { format };
  const size = values.get('size');
  if (typeof size === 'bigint') options.size = size;
  if (format === 'raw') return options; // raw measures by size alone; even preallocation is not looked at
  const number = (key: string): number | undefined => {
    const value = values.get(key);
    // Out-of-range values stay out of range (and fail the engine's checks) rather than wrap.
    return typeof value === 'bigint' ? (value > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_VALUE : Number(value)) : undefined;
  };
  const clusterSize = number('cluster_size');
  if (clusterSize !== undefined) options.clusterSize = clusterSize;
  const refcountBits = number('refcount_bits');
  if (refcountBits !== undefined) options.refcountBits = refcountBits;
  const extendedL2 = values.get('extended_l2');
  if (typeof extendedL2 === 'boolean') options.extendedL2 = extendedL2;
  const compat = values.get('compat');
  if (typeof compat === 'string') options.compat = compat as MeasureOptions['compat'];
  const preallocation = values.get('preallocation');
  if (typeof preallocation === 'string') options.preallocation = preallocation as MeasureOptions['preallocation'];
  // Any backing_file, even an empty one, makes qemu count every cluster.
  if (values.has('backing_file')) options.hasBackingFile = true;
  if (values.get('encrypt.format') === 'luks') throw new CommandError('encrypted images are not supported (encrypt.format=luks)');
  return options;
}

// ---------------------------------------------------------------------------------------------------------
// Snapshots (-l)

interface SnapshotSelector {
  id?: string;
  name?: string;
  /** A bare -l argument: tried as an id, then as a name. */
  idOrName?: string;
}

function snapshotSelectorOf(flags: MeasureFlags): SnapshotSelector | undefined {
  if (flags.snapshotOption !== undefined && flags.snapshot !== undefined) throw new CommandError('-l and -s cannot be used together');
  if (flags.snapshot !== undefined) return { idOrName: flags.snapshot };
  const text = flags.snapshotOption;
  if (text === undefined) return undefined;
  if (!text.startsWith('snapshot.')) return { idOrName: text };
  const selector: SnapshotSelector = {};
  for (const part of text.replace(/,,/g, '\u0000').split(',')) {
    if (part === '') continue;
    const eq = part.indexOf('=');
    const key = eq < 0 ? part : part.slice(0, eq);
    const value = (eq < 0 ? 'on' : part.slice(eq + 1)).replace(/\u0000/g, ',');
    if (key === 'snapshot.id') selector.id = value;
    else if (key === 'snapshot.name') selector.name = value;
    else throw new CommandError(`Invalid parameter '${key}'; Failed in parsing snapshot param '${text}'`);
  }
  return selector;
}

/** qemu's bdrv_snapshot_load_tmp(_by_id_or_name): id and name both given must both match. */
async function snapshotView(device: BlockDevice, selector: SnapshotSelector): Promise<BlockDevice> {
  if (!(device instanceof Qcow2Device)) {
    throw new CommandError(`Failed to load snapshot: Block format '${device.format}' used by device '' does not support temporarily loading internal snapshots`);
  }
  const snapshots = device.image.snapshots;
  let found;
  if (selector.idOrName !== undefined) {
    found = snapshots.find((s) => s.id === selector.idOrName) ?? snapshots.find((s) => s.name === selector.idOrName);
  } else if (selector.id !== undefined || selector.name !== undefined) {
    found = snapshots.find((s) => (selector.id === undefined || s.id === selector.id) && (selector.name === undefined || s.name === selector.name));
  }
  if (found === undefined) throw new CommandError("Failed to load snapshot: Can't find snapshot");
  return device.snapshotView(found);
}

// ---------------------------------------------------------------------------------------------------------
// Output

/** qemu-img measure's human output. */
export function formatMeasureHuman(result: MeasureResult): string {
  let text = `required size: ${result.required}\nfully allocated size: ${result.fullyAllocated}\n`;
  if (result.bitmaps !== undefined) text += `bitmaps size: ${result.bitmaps}\n`;
  return text;
}

/** qemu-img measure --output=json: qemu's key order, and its int64 (a value of 2^63 or more prints negative). */
export function formatMeasureJson(result: MeasureResult): string {
  const int64 = (value: bigint): bigint => BigInt.asIntN(64, value);
  return `${qemuJson({
    bitmaps: result.bitmaps === undefined ? undefined : int64(result.bitmaps),
    required: int64(result.required),
    'fully-allocated': int64(result.fullyAllocated),
  })}\n`;
}

function warn(message: string): void {
  process.stderr.write(`qcowkit: warning: ${message}\n`);
}

function targetFormat(name: string): 'qcow2' | 'raw' {
  if (name === 'qcow2' || name === 'raw') return name;
  if (QEMU_FORMATS.has(name)) throw new CommandError(`Block driver '${name}' does not support size measurement`);
  throw new CommandError(`Unknown file format '${name}'`);
}

export function registerMeasure(program: Command): void {
  program
    .command('measure')
    .description('calculate the file size of a new image: for a disk of SIZE bytes, or to hold the contents of FILE')
    .argument('[filename...]')
    .option('--output <fmt>', 'human or json', 'human')
    .option('-f, --format <fmt>', 'format of FILE (probed when absent)')
    .option('-O, --output-format <fmt>', 'format of the new image (raw or qcow2)', 'raw')
    .option('-o, --options <options>', 'creation options of the new image (repeatable)', (value: string, previous: string[]) => [...previous, value], [] as string[])
    .option('-l, --snapshot-option <snapshot_param>', "measure FILE as it was at an internal snapshot: 'snapshot.id=ID,snapshot.name=NAME' or 'ID_OR_NAME'")
    .option('-s, --snapshot <id_or_name>', 'same as -l ID_OR_NAME (qcowkit extension)')
    .option('--size <size>', 'virtual size of an empty new disk (k, M, G, T, P, E suffixes)')
    .option(...FORCE_SHARE_OPTION)
    .option('--untrusted', 'refuse backing and data file references of FILE')
    .action(async (filenames: string[], flags: MeasureFlags) => {
      const output = parseOutputFormat(flags.output);
      for (const list of flags.options) if (!isValidOptionList(list)) throw new CommandError(`Invalid option list: ${list}`);
      const size = flags.size === undefined ? undefined : parseImageSize(flags.size, warn);
      if (filenames.length > 1) throw new CommandError('At most one filename argument is allowed.');
      const filename = filenames[0];
      const selector = snapshotSelectorOf(flags);
      if (filename === undefined && (flags.format !== undefined || selector !== undefined)) {
        throw new CommandError('--image-opts, -f, and -l require a filename argument.');
      }
      if (filename !== undefined && size !== undefined) throw new CommandError('--size N cannot be used together with a filename.');
      if (filename === undefined && size === undefined) throw new CommandError('Either --size N or one filename must be specified.');

      const print = (result: MeasureResult): void => {
        process.stdout.write(output === 'json' ? formatMeasureJson(result) : formatMeasureHuman(result));
      };
      if (filename === undefined) {
        const options = measureOptionsOf(targetFormat(flags.outputFormat), flags.options, warn);
        print(measureNewImage(size!, options));
        return;
      }
      const device = await openForReading(filename, flags);
      await withDevice(device, async () => {
        const source = selector === undefined ? device : await snapshotView(device, selector);
        const options = measureOptionsOf(targetFormat(flags.outputFormat), flags.options, warn);
        print(await measureImage(source, options));
      });
    });
}
