import type { Command } from 'commander';
import {
  describeDisks,
  snapshotAllDisks,
  snapshotDomain,
  type DiskChainReport,
  type LiveMethod,
  type QuiesceMode,
  type SnapshotMode,
} from '@qcowkit/snapshot';
import { CommandError } from '../output/errors.js';
import { qemuJson } from '../output/json.js';
import { parseOutputFormat } from '../output/output-format.js';
import { progressPrinter } from '../output/progress.js';
import { registerVmRecover } from './vm-recover.js';
import { connection, reporting, type ConnectFlags } from './vm-connection.js';

/**
 * qcowkit vm: disks of libvirt guests. `vm snapshot` writes one disk of a guest (or, with --all-disks, every disk
 * at one instant) into standalone images, live or cold as nova's libvirt driver would (see @qcowkit/snapshot);
 * `vm recover` brings a guest back after a killed snapshot run (vm-recover.ts); `vm disks` lists a guest's disks
 * and their chains. Everything goes through `virsh -c URI`; the images are read by the engine with the formats
 * libvirt states.
 */

interface SnapshotFlags extends ConnectFlags {
  mode: string;
  method?: string;
  disk?: string;
  quiesce?: boolean;
  requireQuiesce?: boolean;
  outputFormat: string;
  compress?: boolean;
  progress?: boolean;
  tempDir?: string;
  allDisks?: boolean;
}

interface DisksFlags extends ConnectFlags {
  output: string;
  inactive?: boolean;
}

function oneOf<T extends string>(value: string, allowed: readonly T[], flag: string): T {
  if ((allowed as readonly string[]).includes(value)) return value as T;
  throw new CommandError(`${flag} must be one of ${allowed.join(', ')} (got '${value}')`);
}

function formatDisksHuman(disks: readonly DiskChainReport[]): string {
  const rows = disks.map((disk) => [disk.target, disk.device, disk.bus ?? '-', disk.chain[0]?.format ?? '-', disk.chain[0]?.path ?? `(${disk.chain[0]?.type ?? 'none'})`]);
  const widths = [0, 1, 2, 3].map((i) => Math.max(...rows.map((r) => r[i]!.length), ['Target', 'Device', 'Bus', 'Format'][i]!.length));
  const line = (cells: string[]): string => cells.map((c, i) => (i < 4 ? c.padEnd(widths[i]!) : c)).join('  ').trimEnd();
  const out = [line(['Target', 'Device', 'Bus', 'Format', 'Image'])];
  disks.forEach((disk, index) => {
    out.push(line(rows[index]!));
    const indent = ' '.repeat(widths[0]! + widths[1]! + widths[2]! + 6);
    for (const layer of disk.chain.slice(1)) out.push(`${indent}${(layer.format ?? '?').padEnd(widths[3]!)}  └ ${layer.path ?? `(${layer.type})`}`);
    if (disk.chainError !== undefined) out.push(`${indent}chain: ${disk.chainError}`);
  });
  return `${out.join('\n')}\n`;
}

export function registerVm(program: Command): void {
  const vm = program.command('vm').description('snapshot and inspect the disks of libvirt guests (through virsh)');

  vm.command('snapshot')
    .description("write one disk of a guest into a standalone image: live while it runs on QEMU/KVM, else cold (as OpenStack nova); with --all-disks, every disk at one instant")
    .argument('<domain>', 'libvirt domain name, id or UUID')
    .argument('<output>', 'image to write (with --all-disks: a directory that receives TARGET.qcow2 per disk and manifest.json)')
    .option('--connect <uri>', 'libvirt connection URI (default: $LIBVIRT_DEFAULT_URI or qemu:///system)')
    .option('--mode <mode>', 'auto (live when running or paused on QEMU/KVM, else cold), live or cold', 'auto')
    .option('--method <method>', 'live method: overlay (temporary external snapshot, default) or mirror (nova\'s blockcopy)')
    .option('--disk <target>', "the disk's target device (default: the first disk)")
    .option('--all-disks', 'every disk at one instant (one atomic snapshot of all disks, quiesced once), into OUTPUT as a directory')
    .option('--quiesce', 'freeze the guest file systems through the guest agent; go on without it when there is none')
    .option('--require-quiesce', 'freeze the guest file systems through the guest agent, or fail')
    .option('-O, --output-format <fmt>', 'output format: qcow2 or raw', 'qcow2')
    .option('-c, --compress', 'write compressed clusters (qcow2 output)')
    .option('-p, --progress', 'show progress of the conversion')
    .option('--temp-dir <dir>', "where the temporary overlay or delta goes (default: the output's directory; QEMU must reach it)")
    .action(async (domain: string, output: string, flags: SnapshotFlags) => {
      const mode = oneOf<SnapshotMode>(flags.mode, ['auto', 'live', 'cold'], '--mode');
      const method = flags.method === undefined ? undefined : oneOf<LiveMethod>(flags.method, ['overlay', 'mirror'], '--method');
      if (flags.allDisks && flags.disk !== undefined) throw new CommandError('--all-disks and --disk exclude each other');
      if (flags.allDisks && method === 'mirror') throw new CommandError('--all-disks takes every disk at one instant with the overlay method; --method mirror copies one disk');
      if (flags.quiesce && flags.requireQuiesce) throw new CommandError('--quiesce and --require-quiesce exclude each other');
      const quiesce: QuiesceMode = flags.requireQuiesce ? 'require' : flags.quiesce ? 'try' : 'off';
      const format = oneOf(flags.outputFormat, ['qcow2', 'raw'] as const, '-O');
      if (flags.compress && format !== 'qcow2') throw new CommandError('Compression not supported for this file format');
      const progress = progressPrinter(flags.progress === true);
      // Ctrl-C or SIGTERM: stop at the next piece of the conversion, and let the flow put the guest back first.
      let interrupted: NodeJS.Signals | undefined;
      const onSignal = (signal: NodeJS.Signals): void => {
        if (interrupted !== undefined) process.exit(128 + (signal === 'SIGINT' ? 2 : 15));
        interrupted = signal;
        process.stderr.write(`qcowkit: ${domain}: ${signal}: stopping; putting the guest back first (again to quit at once)\n`);
      };
      process.on('SIGINT', onSignal);
      process.on('SIGTERM', onSignal);
      const onProgress = (done: number, total: number): void => {
        if (interrupted !== undefined) throw new CommandError(`interrupted (${interrupted})`, 128 + (interrupted === 'SIGINT' ? 2 : 15), domain);
        progress.update(done, total);
      };
      const common = {
        domain,
        mode,
        quiesce,
        format,
        compress: flags.compress === true,
        ...(flags.tempDir === undefined ? {} : { tempDir: flags.tempDir }),
        onProgress,
      };
      const result = await reporting<{ notes: string[] }>(domain, () =>
        flags.allDisks
          ? snapshotAllDisks(connection(flags), { ...common, outputDir: output })
          : snapshotDomain(connection(flags), {
              ...common,
              output,
              ...(method === undefined ? {} : { method }),
              ...(flags.disk === undefined ? {} : { disk: flags.disk }),
            }),
      ).finally(() => {
        process.off('SIGINT', onSignal);
        process.off('SIGTERM', onSignal);
      });
      progress.finish();
      for (const note of result.notes) process.stderr.write(`qcowkit: ${domain}: warning: ${note}\n`);
    });

  registerVmRecover(vm);

  vm.command('disks')
    .description("list a guest's disks, each with its image chain (formats as libvirt states them)")
    .argument('<domain>', 'libvirt domain name, id or UUID')
    .option('--connect <uri>', 'libvirt connection URI (default: $LIBVIRT_DEFAULT_URI or qemu:///system)')
    .option('--output <fmt>', 'human or json', 'human')
    .option('--inactive', 'the persistent definition instead of the running one')
    .action(async (domain: string, flags: DisksFlags) => {
      const output = parseOutputFormat(flags.output);
      const disks = await reporting(domain, () => describeDisks(connection(flags), domain, { inactive: flags.inactive === true }));
      if (output === 'json') {
        process.stdout.write(
          `${qemuJson(
            disks.map((disk) => ({
              target: disk.target,
              device: disk.device,
              bus: disk.bus,
              readonly: disk.readonly,
              chain: disk.chain.map((layer) => ({ type: layer.type, path: layer.path, format: layer.format, 'data-file': layer.dataFile })),
              'chain-error': disk.chainError,
            })),
          )}\n`,
        );
      } else {
        process.stdout.write(formatDisksHuman(disks));
      }
    });
}
