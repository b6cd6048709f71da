import { CommandError } from '../output/errors.js';
import { INT64_MAX, QemuSizeError, qemuStrtosz } from '../parse/qemu-size.js';

/**
 * qemu-io's command language, the subset qcowkit speaks: its getopt-style flags (a value may be glued to its
 * flag, "-P0xab"), its numbers (qemu_strtosz: decimal or 0x hex, a fraction only before a suffix, suffixes
 * b/k/M/G/T/P/E) and its messages, word for word, so scripts and their expected output carry over.
 */
export interface IoCommand {
  name: 'read' | 'write' | 'discard' | 'flush';
  flags: Set<string>;
  pattern?: number;
  offset: number;
  length: number;
  /** The length as typed, for messages. */
  lengthText: string;
}

/** qemu's BDRV_REQUEST_MAX_BYTES: the largest single request. */
export const MAX_REQUEST_BYTES = 2147483136;

/**
 * An error qemu-io reports for one command; the other commands still run. qemu-io prints an unknown command
 * and a wrong argument count on stderr, and the rest (parsing, patterns, alignment) on stdout.
 */
export class IoCommandError extends CommandError {
  constructor(
    message: string,
    readonly stream: 'stdout' | 'stderr' = 'stdout',
  ) {
    super(message);
  }
}

/** qemu-io's cvtnum: qemu_strtosz, at most INT64_MAX, with qemu-io's two messages. */
export function parseIoNumber(text: string): number {
  let value: bigint;
  try {
    value = qemuStrtosz(text);
  } catch (error) {
    if (error instanceof QemuSizeError && error.reason === 'invalid') {
      throw new IoCommandError(`Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- ${text}`);
    }
    value = INT64_MAX + 1n;
  }
  // Above 2^53 no request here can reach: refused as too large (qemu refuses such requests a step later).
  if (value > INT64_MAX || value > BigInt(Number.MAX_SAFE_INTEGER)) throw new IoCommandError(`Parsing error: argument too large -- ${text}`);
  return Number(value);
}

function parsePattern(text: string): number {
  const value = /^(0x[0-9a-f]+|\d+)$/i.test(text) ? Number(text) : Number.NaN;
  if (!Number.isInteger(value) || value > 255) throw new IoCommandError(`${text} is not a valid pattern byte`);
  return value;
}

const FLAGS: Record<IoCommand['name'], { letters: string; withValue: string; args: number }> = {
  read: { letters: 'vq', withValue: 'P', args: 2 },
  write: { letters: 'zucq', withValue: 'P', args: 2 },
  discard: { letters: 'q', withValue: '', args: 2 },
  flush: { letters: '', withValue: '', args: 0 },
};

export function parseIoCommand(text: string): IoCommand {
  const words = text.trim().split(/\s+/);
  const name = words.shift() ?? '';
  if (!(name in FLAGS)) throw new IoCommandError(`command "${name}" not found`, 'stderr');
  const spec = FLAGS[name as IoCommand['name']];
  const command: IoCommand = { name: name as IoCommand['name'], flags: new Set(), offset: 0, length: 0, lengthText: '' };
  const positional: string[] = [];
  for (let i = 0; i < words.length; i++) {
    const word = words[i]!;
    if (word.startsWith('-') && word.length > 1 && !/^-\d/.test(word)) {
      for (let j = 1; j < word.length; j++) {
        const flag = word[j]!;
        if (spec.withValue.includes(flag)) {
          const value = j + 1 < word.length ? word.slice(j + 1) : words[++i];
          if (value === undefined) throw new IoCommandError(`${name}: option requires an argument -- '${flag}'`);
          command.pattern = parsePattern(value);
          break;
        }
        if (!spec.letters.includes(flag)) throw new IoCommandError(`${name}: invalid option -- '${flag}'`);
        command.flags.add(flag);
      }
    } else {
      positional.push(word);
    }
  }
  if (positional.length !== spec.args) {
    const expected = spec.args === 0 ? 'expected 0 arguments' : `expected at least ${spec.args} arguments`;
    throw new IoCommandError(`bad argument count ${positional.length} to ${name}, ${expected}`, 'stderr');
  }
  if (command.flags.has('u') && !command.flags.has('z')) throw new IoCommandError('-u requires -z to be specified');
  if (spec.args === 2) {
    command.offset = parseIoNumber(positional[0]!);
    command.lengthText = positional[1]!;
    command.length = parseIoNumber(positional[1]!);
    if (command.length > MAX_REQUEST_BYTES) throw new IoCommandError(`length cannot exceed ${MAX_REQUEST_BYTES}, given ${command.lengthText}`);
    if (command.flags.has('c')) {
      if (command.offset % 512 !== 0) throw new IoCommandError(`${positional[0]} is not a sector-aligned value for 'offset'`);
      if (command.length % 512 !== 0) throw new IoCommandError(`${command.lengthText} is not a sector-aligned value for 'count'`);
    }
  }
  return command;
}
