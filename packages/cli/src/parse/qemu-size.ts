import { CommandError } from '../output/errors.js';

/**
 * Sizes as qemu reads them, for every command: the one parser (qemu_strtosz) and the three ways qemu's tools
 * report what it refuses — qemu-img's cvtnum (command-line numbers), QemuOpts (`-o key=size`) and qemu-io's
 * cvtnum (numbers inside a qemu-io command). Each command picks the reporter the matching qemu tool uses, so
 * its messages are qemu's.
 */

const SIZE_SUFFIXES: Record<string, bigint> = { b: 1n, k: 1n << 10n, m: 1n << 20n, g: 1n << 30n, t: 1n << 40n, p: 1n << 50n, e: 1n << 60n };
export const U64_MAX = (1n << 64n) - 1n;
export const INT64_MAX = (1n << 63n) - 1n;

/** Why qemu_strtosz refused a text: not a size at all, or a size above 2^64 - 1. */
export class QemuSizeError extends Error {
  constructor(readonly reason: 'invalid' | 'range') {
    super(reason);
  }
}

/** Where qemu prints its deprecation warnings (a multiplier on a hex number). */
export type SizeWarning = (message: string) => void;

/**
 * qemu's qemu_strtosz: a decimal integer (or 0x hex, which takes no fraction), an optional fraction, an optional
 * suffix b/k/M/G/T/P/E (binary multiples, any case); a fraction needs a suffix and rounds half up. Leading
 * white space is skipped; anything after the suffix is an error. Throws QemuSizeError.
 */
export function qemuStrtosz(text: string, warn?: SizeWarning): bigint {
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

/** The range a qemu-img number must fall in (cvtnum_full's min and max). */
export interface SizeRange {
  min: bigint;
  max: bigint;
}

const INT64_RANGE: SizeRange = { min: 0n, max: INT64_MAX };

/**
 * qemu-img's cvtnum_full(what, text, min, max): a size in `range` (cvtnum: 0 to INT64_MAX), with qemu-img's two
 * messages ("Invalid image size specified. …"); `what` is qemu's name for the number ("image size", "bs"…).
 */
export function cvtnum(what: string, text: string, warn?: SizeWarning, range: SizeRange = INT64_RANGE): bigint {
  let value: bigint;
  try {
    value = qemuStrtosz(text, warn);
  } catch (error) {
    if (error instanceof QemuSizeError && error.reason === 'invalid') {
      throw new CommandError(`Invalid ${what} specified. You may use k, M, G, T, P or E suffixes for kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.`);
    }
    value = INT64_MAX + 1n;
  }
  if (value < range.min || value > range.max) throw new CommandError(`Invalid ${what} specified. Must be between ${range.min} and ${range.max}.`);
  return value;
}

/**
 * cvtnum as a number of bytes: a value above 2^53 (which qemu would take, but no byte count here reaches) is
 * refused with cvtnum's range message.
 */
export function cvtnumBytes(what: string, text: string, warn?: SizeWarning, range: SizeRange = INT64_RANGE): number {
  const value = cvtnum(what, text, warn, range);
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw new CommandError(`Invalid ${what} specified. Must be between ${range.min} and ${range.max}.`);
  return Number(value);
}

/** A size-typed QemuOpts value (parse_option_size: `-o size=…`, `cluster_size=…`), with QemuOpts' messages. */
export function optionSize(name: string, value: string, warn?: SizeWarning): bigint {
  try {
    return qemuStrtosz(value, warn);
  } catch (error) {
    if (error instanceof QemuSizeError && error.reason === 'range') throw new CommandError(`Value '${value}' is out of range for parameter '${name}'`);
    throw new CommandError(
      `Parameter '${name}' expects a non-negative number below 2^64\nOptional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\nand exabytes, respectively.`,
    );
  }
}

/** optionSize as a number of bytes: above 2^53 it is refused as out of range. */
export function optionSizeBytes(name: string, value: string, warn?: SizeWarning): number {
  const size = optionSize(name, value, warn);
  if (size > BigInt(Number.MAX_SAFE_INTEGER)) throw new CommandError(`Value '${value}' is out of range for parameter '${name}'`);
  return Number(size);
}
