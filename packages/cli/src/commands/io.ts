import type { Command } from 'commander';
import { Qcow2Device, Qcow2Error, isWritable, type BlockDevice, type WritableBlockDevice } from '@qcowkit/qcow2/engine';
import { compressionTypeName } from '@qcowkit/qcow2/format';
import { clusterCompressor, openImageFile } from '@qcowkit/qcow2/node';
import { CommandError } from '../output/errors.js';
import { IoCommandError, parseIoCommand, type IoCommand } from './io-parse.js';
import { FORCE_SHARE_OPTION, parseFormatFlag, refuseForceShareForWriting, withDevice } from './open.js';

/**
 * qcowkit io: a subset of qemu-io (read, write, discard, flush; see io-parse.ts for the language). Like qemu-io,
 * every command runs even after one failed, errors go to stdout, and the exit status is 1 when any failed.
 */
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
        if (!(await writeCompressed(writable, offset, length, command.pattern ?? 0xcd, filename))) return false;
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

/** qemu-io write -c: whole clusters only (the disk's short last one included); false when refused. */
async function writeCompressed(device: WritableBlockDevice, offset: number, length: number, pattern: number, filename: string): Promise<boolean> {
  if (!(device instanceof Qcow2Device)) throw new CommandError('Compressed writes need a qcow2 image', 1, filename);
  const clusterSize = device.image.clusterSize;
  if (offset % clusterSize !== 0 || (length % clusterSize !== 0 && offset + length !== device.size)) {
    process.stdout.write('write failed: Invalid argument\n');
    return false;
  }
  const compress = clusterCompressor(compressionTypeName(device.image.layout.compressionType), clusterSize);
  for (let at = offset; at < offset + length; at += clusterSize) {
    const cluster = new Uint8Array(Math.min(clusterSize, offset + length - at)).fill(pattern);
    // The disk's short last cluster is compressed padded with zeros, as qemu does.
    const whole = new Uint8Array(clusterSize);
    whole.set(cluster);
    const stored = await compress(whole);
    if (stored === undefined) await device.write(cluster, at);
    else await device.writeCompressed(at, stored);
  }
  return true;
}

export function registerIo(program: Command): void {
  program
    .command('io')
    .description('run qemu-io style commands on an image (read, write, discard, flush)')
    .argument('<filename>')
    .option('-f, --format <fmt>', 'image format')
    .option('-c, --cmd <command>', 'command to run (repeatable)', (value: string, previous: string[]) => [...previous, value], [] as string[])
    .option('-r, --read-only', 'open the image read-only')
    .option(FORCE_SHARE_OPTION[0], 'with only reads: read even if another process (a running guest) writes the image')
    .action(async (filename: string, flags: { format?: string; cmd: string[]; readOnly?: boolean; forceShare?: boolean }) => {
      // Like qemu-io, a command that does not parse is reported and skipped; the others still run.
      const commands: Array<IoCommand | IoCommandError> = flags.cmd.map((text) => {
        try {
          return parseIoCommand(text);
        } catch (error) {
          if (error instanceof IoCommandError) return error;
          throw error;
        }
      });
      const needsWrite = commands.some((c) => !(c instanceof IoCommandError) && c.name !== 'read');
      if (needsWrite && flags.readOnly) throw new CommandError('image is opened read-only', 1, filename);
      if (needsWrite) refuseForceShareForWriting(flags, filename);
      const format = parseFormatFlag(flags.format);
      const device = await openImageFile(filename, { ...(format === undefined ? {} : { format }), writable: needsWrite, ...(flags.forceShare ? { forceShare: true } : {}) });
      await withDevice(device, async () => {
        let ok = true;
        for (const command of commands) {
          if (command instanceof IoCommandError) {
            (command.stream === 'stderr' ? process.stderr : process.stdout).write(`${command.message}\n`);
            ok = false;
            continue;
          }
          try {
            ok = (await run(device, command, filename)) && ok;
          } catch (error) {
            // An I/O failure of one command (qemu-io: "write failed: Input/output error") does not stop the rest.
            if (!(error instanceof Qcow2Error) || error.code !== 'IO_ERROR') throw error;
            process.stdout.write(`${command.name} failed: Input/output error\n`);
            ok = false;
          }
        }
        if (!ok) process.exitCode = 1;
      });
    });
}
