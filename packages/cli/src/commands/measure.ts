import type { Command } from 'commander';
import { Qcow2Device, measureImage, measureNewImage, type BlockDevice, type MeasureOptions, type MeasureResult } from '@qcowkit/qcow2/engine';
import { CommandError, printWarning } from '../output/errors.js';
import { qemuJson } from '../output/json.js';
import { parseOutputFormat } from '../output/output-format.js';
import { checkOptionLists, optionBool, optionNumber, optionPairs } from '../parse/option-list.js';
import { cvtnum, optionSize, type SizeWarning } from '../parse/qemu-size.js';
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

type ParsedValue = bigint | boolean | string;

/** Parses the accumulated -o strings into the last value given for each key, type-checked like QemuOpts. */
function parseMeasureOptions(lists: string[], format: 'qcow2' | 'raw', warn: SizeWarning): Map<string, ParsedValue> {
  checkOptionLists(lists);
  const known = format === 'qcow2' ? QCOW2_OPTIONS : FILE_OPTIONS;
  const values = new Map<string, ParsedValue>();
  if (lists.length === 0) return values;
  for (const [key, value] of lists.flatMap(optionPairs)) {
    const type = known[key];
    if (type === undefined) throw new CommandError(`Invalid parameter '${key}'`);
    switch (type) {
      case 'size':
        values.set(key, optionSize(key, value, warn));
        break;
      case 'number':
        values.set(key, optionNumber(key, value));
        break;
      case 'bool':
        values.set(key, optionBool(key, value));
        break;
      case 'string':
        values.set(key, value);
        break;
    }
  }
  return values;
}

/** The engine's options from -O and -o. Values the engine checks (cluster size, compat…) pass through as given. */
export function measureOptionsOf(format: 'qcow2' | 'raw', lists: string[], warn: SizeWarning = () => {}): MeasureOptions {
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
  for (const [key, value] of optionPairs(text)) {
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
      checkOptionLists(flags.options);
      const size = flags.size === undefined ? undefined : cvtnum('image size', flags.size, printWarning);
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
        const options = measureOptionsOf(targetFormat(flags.outputFormat), flags.options, printWarning);
        print(measureNewImage(size!, options));
        return;
      }
      const device = await openForReading(filename, flags);
      await withDevice(device, async () => {
        const source = selector === undefined ? device : await snapshotView(device, selector);
        const options = measureOptionsOf(targetFormat(flags.outputFormat), flags.options, printWarning);
        print(await measureImage(source, options));
      });
    });
}
