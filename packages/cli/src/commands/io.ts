import type { Command } from 'commander';
import { Qcow2Device, isWritable, type BlockDevice, type WritableBlockDevice } from '@qcowkit/qcow2';
import { clusterCompressor, openImageFile } from '@qcowkit/qcow2/node';
import { CommandError } from '../output/errors.js';
import { parseFormatFlag, withDevice } from './open.js';

/**
 * A subset of qemu-io: read [-P pattern] [-v], write [-P pattern] [-z [-u]] [-c], discard, flush — with
 * qemu-io's numbers (k/M/G/T/P/E suffixes), messages, and exit status 1 when any command failed.
 */
interface IoCommand {
  name: 'read' | 'write' | 'discard' | 'flush';
  flags: Set<string>;
  pattern?: number;
  offset: number;
  length: number;
}

const SUFFIX: Record<string, number> = { k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40, p: 2 ** 50, e: 2 ** 60 };

function parseNumber(text: string): number {
  const match = /^(0x[0-9a-f]+|\d+)([kmgtpe]?)$/i.exec(text);
  if (!match) throw new CommandError(`Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- ${text}`);
  const value = Number(match[1]) * (match[2] === '' ? 1 : SUFFIX[match[2]!.toLowerCase()]!);
  if (!Number.isSafeInteger(value)) throw new CommandError(`Parsing error: number too large -- ${text}`);
  return value;
}

function parseCommand(text: string): IoCommand {
  const words = text.trim().split(/\s+/);
  const name = words.shift();
  if (name !== 'read' && name !== 'write' && name !== 'discard' && name !== 'flush') throw new CommandError(`command "${name}" not found`);
  const command: IoCommand = { name, flags: new Set(), offset: 0, length: 0 };
  const positional: string[] = [];
  while (words.length > 0) {
    const word = words.shift()!;
    if (word === '-P') {
      const pattern = parseNumber(words.shift() ?? '');
      command.pattern = pattern & 0xff;
    } else if (/^-[vzucq]+$/.test(word)) {
      for (const flag of word.slice(1)) command.flags.add(flag);
    } else {
      positional.push(word);
    }
  }
  if (name === 'flush') return command;
  if (positional.length !== 2) throw new CommandError(`${name}: wrong number of arguments`);
  command.offset = parseNumber(positional[0]!);
  command.length = parseNumber(positional[1]!);
  return command;
}

/** qemu-io's size strings: "512 bytes", "64 KiB", "1.500 MiB". */
function sizeString(bytes: number): string {
  const units = ['KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB'];
  if (bytes < 1024) return `${bytes} bytes`;
  let value = bytes;
  let unit = -1;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${Number.isInteger(value) ? value : value.toFixed(3)} ${units[unit]}`;
}

function timing(bytes: number, seconds: number): string {
  const safe = Math.max(seconds, 1e-9);
  return `${sizeString(bytes)}, 1 ops; ${seconds.toFixed(2).padStart(5, '0')} sec (${sizeString(bytes / safe).replace('bytes', 'bytes')}/sec and ${(1 / safe).toFixed(4)} ops/sec)`;
}

function hexDump(data: Uint8Array, offset: number): string {
  const lines: string[] = [];
  for (let i = 0; i < data.length; i += 16) {
    const row = data.subarray(i, i + 16);
    const hex = [...row].map((b) => b.toString(16).padStart(2, '0')).join(' ');
    const ascii = [...row].map((b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : '.')).join('');
    lines.push(`${(offset + i).toString(16).padStart(8, '0')}:  ${hex.padEnd(47)}  ${ascii}`);
  }
  return lines.join('\n');
}

async function run(device: BlockDevice, command: IoCommand, filename: string): Promise<boolean> {
  const out = (line: string): void => {
    process.stdout.write(`${line}\n`);
  };
  const started = performance.now();
  const { offset, length } = command;
  if (command.name !== 'flush' && offset + length > device.size) {
    out(`${command.name} failed: Input/output error`);
    return false;
  }
  switch (command.name) {
    case 'read': {
      const data = new Uint8Array(length);
      await device.read(data, offset);
      let ok = true;
      if (command.pattern !== undefined && data.some((b) => b !== command.pattern)) {
        out(`Pattern verification failed at offset ${offset}, ${length} bytes`);
        ok = false;
      }
      if (command.flags.has('v')) out(hexDump(data, offset));
      if (!command.flags.has('q')) {
        out(`read ${length}/${length} bytes at offset ${offset}`);
        out(timing(length, (performance.now() - started) / 1000));
      }
      return ok;
    }
    case 'write': {
      const writable = requireWritable(device, filename);
      if (command.flags.has('z')) {
        await writable.writeZeroes(offset, length, { unmap: command.flags.has('u') });
      } else if (command.flags.has('c')) {
        await writeCompressed(writable, offset, length, command.pattern ?? 0xcd, filename);
      } else {
        await writable.write(new Uint8Array(length).fill(command.pattern ?? 0xcd), offset);
      }
      if (!command.flags.has('q')) {
        out(`wrote ${length}/${length} bytes at offset ${offset}`);
        out(timing(length, (performance.now() - started) / 1000));
      }
      return true;
    }
    case 'discard':
      await requireWritable(device, filename).discard(offset, length);
      if (!command.flags.has('q')) {
        out(`discard ${length}/${length} bytes at offset ${offset}`);
        out(timing(length, (performance.now() - started) / 1000));
      }
      return true;
    case 'flush':
      await requireWritable(device, filename).flush();
      return true;
  }
}

function requireWritable(device: BlockDevice, filename: string): WritableBlockDevice {
  if (!isWritable(device)) throw new CommandError('image is open read-only', 1, filename);
  return device;
}

async function writeCompressed(device: WritableBlockDevice, offset: number, length: number, pattern: number, filename: string): Promise<void> {
  if (!(device instanceof Qcow2Device)) throw new CommandError('Compressed writes need a qcow2 image', 1, filename);
  const clusterSize = device.image.clusterSize;
  if (offset % clusterSize !== 0 || (length % clusterSize !== 0 && offset + length !== device.size)) {
    throw new CommandError('write failed: Invalid argument (compressed writes must cover whole clusters)', 1, filename);
  }
  const compress = clusterCompressor(device.image.layout.compressionType === 1 ? 'zstd' : 'zlib', clusterSize);
  for (let at = offset; at < offset + length; at += clusterSize) {
    const cluster = new Uint8Array(Math.min(clusterSize, offset + length - at)).fill(pattern);
    // The disk's short last cluster is compressed padded with zeros, as qemu does.
    const whole = new Uint8Array(clusterSize);
    whole.set(cluster);
    const stored = await compress(whole);
    if (stored === undefined) await device.write(cluster, at);
    else await device.writeCompressed(at, stored);
  }
}

export function registerIo(program: Command): void {
  program
    .command('io')
    .description('run qemu-io style commands on an image (read, write, discard, flush)')
    .argument('<filename>')
    .option('-f, --format <fmt>', 'image format')
    .option('-c, --cmd <command>', 'command to run (repeatable)', (value: string, previous: string[]) => [...previous, value], [] as string[])
    .option('-r, --read-only', 'open the image read-only')
    .action(async (filename: string, flags: { format?: string; cmd: string[]; readOnly?: boolean }) => {
      // Like qemu-io, a command that does not parse is reported and skipped; the others still run.
      const commands: Array<IoCommand | CommandError> = flags.cmd.map((text) => {
        try {
          return parseCommand(text);
        } catch (error) {
          if (error instanceof CommandError) return error;
          throw error;
        }
      });
      const needsWrite = commands.some((c) => !(c instanceof CommandError) && c.name !== 'read');
      if (needsWrite && flags.readOnly) throw new CommandError('image is opened read-only', 1, filename);
      const format = parseFormatFlag(flags.format);
      const device = await openImageFile(filename, { ...(format === undefined ? {} : { format }), writable: needsWrite });
      await withDevice(device, async () => {
        let ok = true;
        for (const command of commands) {
          if (command instanceof CommandError) {
            process.stderr.write(`${command.message}\n`);
            ok = false;
            continue;
          }
          ok = (await run(device, command, filename)) && ok;
        }
        if (!ok) process.exitCode = 1;
      });
    });
}
