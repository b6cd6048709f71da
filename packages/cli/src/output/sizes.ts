import { CommandError } from './errors.js';

const suffixes: Record<string, number> = { '': 1, b: 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40, p: 2 ** 50, e: 2 ** 60 };

/** A size with qemu's suffixes (k, M, G, T, P, E; binary multiples; "b" for bytes). */
export function parseSize(text: string): number {
  const match = /^(\d+(?:\.\d+)?)\s*([bkmgtpe]?)$/i.exec(text.trim());
  if (!match) throw new CommandError(`Invalid size '${text}'`);
  const value = Number(match[1]) * suffixes[match[2]!.toLowerCase()]!;
  if (!Number.isSafeInteger(Math.round(value))) throw new CommandError(`Invalid size '${text}': too large`);
  return Math.round(value);
}
