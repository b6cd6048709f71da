import { CommandError } from './errors.js';

const suffixes: Record<string, number> = { '': 1, b: 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40, p: 2 ** 50, e: 2 ** 60 };

/**
 * A size as qemu parses it (qemu_strtosz): decimal or 0x hex, an optional fraction only with a suffix above
 * bytes, suffixes k, M, G, T, P, E (binary multiples) or b for bytes.
 */
export function parseSize(text: string): number {
  const trimmed = text.trim();
  const hex = /^0x[0-9a-f]+$/i.exec(trimmed);
  if (hex) return Number(trimmed);
  const match = /^(\d+(?:\.\d+)?)\s*([bkmgtpe]?)$/i.exec(trimmed);
  if (!match || (match[1]!.includes('.') && (match[2] === '' || match[2]!.toLowerCase() === 'b'))) {
    throw new CommandError(`Invalid size '${text}'`);
  }
  const value = Number(match[1]) * suffixes[match[2]!.toLowerCase()]!;
  if (!Number.isSafeInteger(Math.round(value))) throw new CommandError(`Invalid size '${text}': too large`);
  return Math.round(value);
}

/**
 * qemu-img's cvtnum for a named number ("rate limit", "buffer size for sparse output"…): a size as parseSize
 * reads it, with qemu's messages for what it refuses.
 */
export function cvtnum(what: string, text: string): number {
  let value: number;
  try {
    value = parseSize(text);
  } catch (error) {
    if ((error as Error).message.endsWith('too large')) throw new CommandError(`Invalid ${what} specified. Must be between 0 and 9223372036854775807.`);
    throw new CommandError(
      `Invalid ${what} specified. You may use k, M, G, T, P or E suffixes for\nkilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.`,
    );
  }
  return value;
}
