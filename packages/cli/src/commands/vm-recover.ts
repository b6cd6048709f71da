import type { Command } from 'commander';
import { recoverDomain } from '@qcowkit/snapshot';
import { connection, reporting } from './vm-connection.js';

/**
 * qcowkit vm recover: brings a guest back after a `vm snapshot` that was killed — from the run's intent log
 * ($XDG_STATE_HOME/qcowkit/vm/UUID.json) and from what libvirt shows: a stale copy job aborted, a temporary
 * overlay merged back (no guest write lost), file systems thawed, a saved guest started again, temporary files
 * removed. Prints each action; with nothing to do it says so and exits 0. Safe to run twice.
 */
export function registerVmRecover(vm: Command): void {
  vm.command('recover')
    .description('bring a guest back after a killed vm snapshot: merge or abort what it left, restart, clean up')
    .argument('<domain>', 'libvirt domain name, id or UUID')
    .option('--connect <uri>', 'libvirt connection URI (default: $LIBVIRT_DEFAULT_URI or qemu:///system)')
    .action(async (domain: string, flags: { connect?: string }) => {
      const report = await reporting(domain, () => recoverDomain(connection(flags), domain, { onAction: (action) => process.stdout.write(`${action}\n`) }));
      for (const note of report.notes) process.stderr.write(`qcowkit: ${domain}: warning: ${note}\n`);
      for (const output of report.keptOutputs) process.stdout.write(`${output} was complete and is kept\n`);
      if (report.nothingToDo) {
        process.stdout.write(`nothing to recover: domain ${domain} has no leftovers of a qcowkit snapshot\n`);
      } else if (report.intent !== undefined) {
        const run = report.intent;
        process.stdout.write(`recovered domain ${domain} from the ${run.flow} snapshot started ${run.started} by pid ${run.owner.pid} (stopped at step '${run.step}')\n`);
      } else {
        process.stdout.write(`recovered domain ${domain}\n`);
      }
    });
}
