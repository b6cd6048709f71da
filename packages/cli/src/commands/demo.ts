import { mkdirSync, mkdtempSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Command } from 'commander';
import { isWritable } from '@qcowkit/qcow2/engine';
import { openImageFile } from '@qcowkit/qcow2/node';
import { CommandError } from '../output/errors.js';
import { sizeToStr } from '../output/human-size.js';

/**
 * qcowkit demo: the main job end to end, for the README. Makes a small raw disk with recognisable contents,
 * measures it, converts it to qcow2 (plain and compressed), shows info and map of the result and compares it
 * with the source. Every step is the real command, run in this process through the same commander program
 * the CLI uses, and announced with its command line; nothing is spawned.
 */

export const DEMO_DISK_SIZE = 64 * 1024 * 1024;
const MiB = 1024 * 1024;

/** The demo disk's contents, all deterministic. Ranges not listed are holes. */
export const DEMO_LAYOUT = {
  /** Text lines at the start and near the end of the disk. */
  text: [
    { offset: 0, length: MiB },
    { offset: 60 * MiB, length: MiB },
  ],
  /** Bytes that do not compress (a fixed xorshift sequence): stored uncompressed even by convert -c. */
  noise: { offset: 16 * MiB, length: 256 * 1024 },
  /** A run of one repeated byte, written by `qcowkit io ... write -P`. */
  pattern: { offset: 4 * MiB, length: 3 * MiB, byte: 0x5a },
  /** A run of written zeros: data to the file system, nothing to a qcow2 image. */
  zeros: { offset: 8 * MiB, length: MiB },
} as const;

const TEXT_LINE_BYTES = 64;

/**
 * 64-byte numbered lines of text (numbered by disk offset, so every line and every cluster differs, yet it
 * compresses well). `offset` must be a multiple of 64.
 */
export function demoText(offset: number, length: number): Uint8Array {
  const encoder = new TextEncoder();
  const out = new Uint8Array(length);
  for (let at = 0; at < length; at += TEXT_LINE_BYTES) {
    const line = (offset + at) / TEXT_LINE_BYTES;
    const text = `qcowkit demo disk, line ${String(line).padStart(7, '0')}: a raw disk becomes qcow2`;
    const bytes = encoder.encode(`${text.padEnd(TEXT_LINE_BYTES - 1, '.').slice(0, TEXT_LINE_BYTES - 1)}\n`);
    out.set(bytes.subarray(0, Math.min(TEXT_LINE_BYTES, length - at)), at);
  }
  return out;
}

/** xorshift32 from a fixed seed: looks random, is the same every run. */
export function demoNoise(length: number): Uint8Array {
  const out = new Uint8Array(length);
  let state = 0x2545f491;
  for (let i = 0; i < length; i++) {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    out[i] = state & 0xff;
  }
  return out;
}

function shellWord(word: string): string {
  return /^[A-Za-z0-9_./=:,+-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`;
}

function say(text: string): void {
  process.stdout.write(`${text}\n`);
}

/**
 * Registers the command `commandName` names on a program (catalog.ts's registerCommandsFor, handed in by the
 * catalog so that the demo, which the catalog loads, does not import it back).
 */
export type RegisterCommands = (program: Command, commandName: string | undefined) => Promise<void>;

/** Runs `qcowkit ARGS` in this process, announced with its command line; a failing step fails the demo. */
async function step(registerCommands: RegisterCommands, args: string[]): Promise<void> {
  say(`\n$ qcowkit ${args.map(shellWord).join(' ')}`);
  const program = new Command('qcowkit').exitOverride();
  await registerCommands(program, args[0]);
  const before = process.exitCode;
  process.exitCode = undefined;
  try {
    await program.parseAsync(args, { from: 'user' });
    if (process.exitCode !== undefined && process.exitCode !== 0) {
      throw new CommandError(`demo step failed with exit status ${process.exitCode}: qcowkit ${args.join(' ')}`);
    }
  } finally {
    process.exitCode = before;
  }
}

/** The demo's own writes (text and noise), through the same device API the io command uses. */
async function writeSampleData(filename: string): Promise<void> {
  const device = await openImageFile(filename, { format: 'raw', writable: true });
  try {
    if (!isWritable(device)) throw new CommandError('internal: demo disk is not writable');
    for (const { offset, length } of DEMO_LAYOUT.text) await device.write(demoText(offset, length), offset);
    await device.write(demoNoise(DEMO_LAYOUT.noise.length), DEMO_LAYOUT.noise.offset);
    await device.flush();
  } finally {
    await device.close();
  }
}

function fileSizeLine(name: string): string {
  const stat = statSync(name);
  return `${name.padEnd(22)} ${sizeToStr(stat.size).padStart(10)} (${stat.size} bytes), ${sizeToStr(stat.blocks * 512)} allocated on disk`;
}

async function runDemo(dir: string, registerCommands: RegisterCommands): Promise<void> {
  const run = (args: string[]): Promise<void> => step(registerCommands, args);
  const { pattern, zeros, noise } = DEMO_LAYOUT;
  say(`# qcowkit demo: a 64 MiB raw disk with some data, converted to qcow2 (plain and compressed), in ${dir}`);
  say(`$ cd ${shellWord(dir)}`);

  await run(['create', '-f', 'raw', 'disk.raw', '64M']);
  say('\n# the demo writes 1 MiB of numbered text lines at 0 and at 60M, and 256 KiB of random-looking bytes at 16M');
  await writeSampleData('disk.raw');
  await run([
    'io', '-f', 'raw',
    '-c', `write -q -P 0x${pattern.byte.toString(16)} ${pattern.offset / MiB}M ${pattern.length / MiB}M`,
    '-c', `write -q -z ${zeros.offset / MiB}M ${zeros.length / MiB}M`,
    'disk.raw',
  ]);
  say(`\n# disk.raw now holds: text at 0 and 60M, a 0x5a run at 4M, written zeros at 8M, noise at ${noise.offset / MiB}M, holes elsewhere`);

  await run(['measure', '-O', 'qcow2', 'disk.raw']);
  await run(['convert', '-f', 'raw', '-O', 'qcow2', 'disk.raw', 'disk.qcow2']);
  await run(['convert', '-c', '-f', 'raw', '-O', 'qcow2', 'disk.raw', 'disk-compressed.qcow2']);
  await run(['info', 'disk.qcow2']);
  await run(['map', 'disk.qcow2']);
  await run(['map', '--output=json', 'disk-compressed.qcow2']);
  await run(['compare', '-f', 'raw', '-F', 'qcow2', 'disk.raw', 'disk.qcow2']);
  await run(['compare', '-f', 'raw', '-F', 'qcow2', 'disk.raw', 'disk-compressed.qcow2']);

  say('\n# file sizes');
  for (const name of ['disk.raw', 'disk.qcow2', 'disk-compressed.qcow2']) say(fileSizeLine(name));
  say(`\n# the files stay in ${dir}`);
}

export function registerDemo(program: Command, registerCommands: RegisterCommands): void {
  program
    .command('demo')
    .description('show the main job on a sample disk: create, measure, convert (plain and compressed), info, map, compare')
    .argument('[dir]', 'directory for the demo files (default: a new temporary directory)')
    .action(async (dirArgument: string | undefined) => {
      let dir: string;
      if (dirArgument === undefined) {
        dir = mkdtempSync(join(tmpdir(), 'qcowkit-demo-'));
      } else {
        dir = resolve(dirArgument);
        mkdirSync(dir, { recursive: true });
      }
      // Commands run from the demo directory, so every announced command line works there as shown.
      const cwd = process.cwd();
      process.chdir(dir);
      try {
        await runDemo(dir, registerCommands);
      } finally {
        process.chdir(cwd);
      }
    });
}
