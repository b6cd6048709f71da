import { MAX_COPY_DEPTH, RateLimiter, SalvagingDevice, type BlockDevice } from '@qcowkit/qcow2/engine';
import { CommandError } from '../output/errors.js';
import { cvtnumBytes } from '../parse/qemu-size.js';

/** The convert flags that shape the copy rather than the output format (checked in qemu-img's order). */
export interface ConvertCopyFlags {
  sparseSize?: string;
  rateLimit?: string;
  salvage?: boolean;
  targetIsZero?: boolean;
  noCreate?: boolean;
  options?: string;
  backingFile?: string;
  quiet?: boolean;
  /** -m: requests in flight. */
  parallel?: string;
  /** -W: out-of-order writes. */
  outOfOrder?: boolean;
}

const SECTOR = 512;
const MAX_SPARSE = 32768 * SECTOR;

export interface ConvertCopySettings {
  /** -S in bytes (0: allocate everything). */
  sparseSize: number;
  rateLimiter?: RateLimiter;
  /** -n without --target-is-zero: the existing target's data must be cleared where the source reads zeros. */
  clearTarget: boolean;
  /** -m: requests in flight (qemu-img's coroutines, 1..16); undefined: the converter's default. */
  parallel: number | undefined;
  /** -W: chunks are written as soon as they are read, not in guest order. */
  outOfOrder: boolean;
}

/** qemu-img -m: a C integer (strtol base 0: decimal, 0x hex, 0 octal), 1 to 16. */
function parseCoroutines(text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  const match = /^\s*([+-]?)(0x[0-9a-f]+|0[0-7]*|[1-9][0-9]*)$/i.exec(text);
  const value = match === null ? Number.NaN : (match[1] === '-' ? -1 : 1) * Number.parseInt(match[2]!, /^0x/i.test(match[2]!) ? 16 : /^0./.test(match[2]!) ? 8 : 10);
  if (!(value >= 1 && value <= MAX_COPY_DEPTH)) {
    throw new CommandError(`Invalid number of coroutines. Allowed number of coroutines is between 1 and ${MAX_COPY_DEPTH}`);
  }
  return value;
}

/** Parses and checks -S, -r, --target-is-zero with qemu-img's messages, before anything is opened. */
export function convertCopySettings(flags: ConvertCopyFlags): ConvertCopySettings {
  const sparseSize = cvtnumBytes('buffer size for sparse output', flags.sparseSize ?? '4k');
  if (sparseSize % SECTOR !== 0 || sparseSize > MAX_SPARSE) {
    throw new CommandError(
      `Invalid buffer size for sparse output specified. Valid sizes are multiples of ${SECTOR} up to ${MAX_SPARSE}. Select 0 to disable sparse detection (fully allocates output).`,
    );
  }
  const parallel = parseCoroutines(flags.parallel);
  const rate = flags.rateLimit === undefined ? 0 : cvtnumBytes('rate limit', flags.rateLimit);
  if (flags.noCreate && flags.options !== undefined) throw new CommandError('-o has no effect when skipping image creation');
  if (flags.targetIsZero && !flags.noCreate) throw new CommandError('--target-is-zero requires use of -n flag');
  // qemu-img 7.2 prints this one but exits 0 without converting; a refusal exits 1 here.
  if (flags.targetIsZero && flags.backingFile !== undefined) throw new CommandError('Cannot use --target-is-zero when the destination image has a backing file');
  return {
    sparseSize,
    ...(rate > 0 ? { rateLimiter: new RateLimiter(rate) } : {}),
    clearTarget: flags.noCreate === true && !flags.targetIsZero,
    parallel,
    outOfOrder: flags.outOfOrder === true,
  };
}

/**
 * --salvage: the source with its unreadable sectors read as zeros, each reported as qemu-img reports it (a
 * warning, not an error: the conversion goes on and exits 0).
 */
export function salvaged(source: BlockDevice, flags: ConvertCopyFlags): BlockDevice {
  if (!flags.salvage) return source;
  return new SalvagingDevice(source, (what, offset) => {
    if (flags.quiet) return;
    const where = what === 'read' ? 'reading offset' : 'reading block status at offset';
    process.stderr.write(`qcowkit: warning: error while ${where} ${offset}: Input/output error\n`);
  });
}
