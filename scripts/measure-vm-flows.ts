/**
 * Time and extra host space of each `qcowkit vm snapshot` flow on the real two-disk Linux guest of the VM tests
 * (scripts/build-test-guest.sh), its disks made standalone qcow2 images (so that the mirror flow copies a whole
 * top image, as it would on a real host): live overlay, live mirror, cold, and --all-disks; each quiesced where
 * it can be. Extra space is sampled every 20 ms by this process while the command runs: the files in the guest's
 * directory and the output's (temporary overlays and deltas; not the output, partial or whole) and libvirt's
 * managed save images, less what was there before. Needs root and libvirtd (scripts/start-libvirt.sh).
 *
 *   node --import tsx scripts/measure-vm-flows.ts [ROUNDS]
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { CLI_MAIN } from '../packages/cli/src/test-support/run-cli.js';
import { qemuImg } from '../packages/snapshot/src/test-support/images.js';
import { guestImage, LinuxGuest } from '../packages/snapshot/src/test-support/linux-guest.js';

const SAVE_DIR = '/var/lib/libvirt/qemu/save';
const rounds = Number(process.argv[2] ?? 3);

/** Bytes allocated on the host by the files directly in `dir` (sparse files count what they hold). */
function allocated(dir: string, skip: (name: string) => boolean = () => false): number {
  if (!existsSync(dir)) return 0;
  let total = 0;
  for (const name of readdirSync(dir)) {
    if (skip(name)) continue;
    try {
      const st = statSync(join(dir, name));
      if (st.isFile()) total += st.blocks * 512;
    } catch {
      // gone meanwhile
    }
  }
  return total;
}

async function measure(guest: LinuxGuest, args: string[], outputs: string): Promise<{ ms: number; peakExtra: number; outputBytes: number; status: number | null; stderr: string }> {
  const isOutput = (name: string): boolean => name === 'out';
  const before = allocated(guest.dir, isOutput) + allocated(SAVE_DIR);
  let peak = 0;
  const sampler = setInterval(() => {
    // Temporary overlays and deltas (not the partial outputs: the output is not extra space).
    const now = allocated(guest.dir, isOutput) + allocated(SAVE_DIR) + allocated(outputs, (n) => !/\.qcowkit-(overlay|delta)-/.test(n));
    peak = Math.max(peak, now - before);
  }, 20);
  const started = process.hrtime.bigint();
  const { status, stderr } = await new Promise<{ status: number | null; stderr: string }>((resolve) => {
    const child = spawn(process.execPath, [CLI_MAIN, ...args], { stdio: ['ignore', 'ignore', 'pipe'], env: guest.env() });
    let err = '';
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('close', (code) => resolve({ status: code, stderr: err }));
  });
  const ms = Number(process.hrtime.bigint() - started) / 1e6;
  clearInterval(sampler);
  return { ms, peakExtra: peak, outputBytes: allocated(outputs, (n) => n.includes('.qcowkit-')), status, stderr };
}

const mib = (bytes: number): string => `${(bytes / 1048576).toFixed(1)} MiB`;

async function main(): Promise<void> {
  const image = guestImage();
  const guest = new LinuxGuest(`qcowkit-vm-linux-${process.pid}`, image);
  try {
    guest.create();
    // Standalone disks: what a guest's disks usually are (and what the mirror flow copies whole).
    for (const [disk, base] of [[guest.vda, image.root], [guest.vdb, image.data]] as const) {
      rmSync(disk);
      qemuImg('convert', '-q', '-f', 'raw', '-O', 'qcow2', base, disk);
    }
    await guest.boot();
    const out = join(guest.dir, 'out');
    mkdirSync(out);
    console.log(`guest: ${guest.virtType}, booted in ${guest.bootSeconds} s; vda ${mib(statSync(guest.vda).blocks * 512)}, vdb ${mib(statSync(guest.vdb).blocks * 512)} allocated`);
    const flows: Array<[string, string[]]> = [
      ['overlay --require-quiesce', ['--method', 'overlay', '--require-quiesce']],
      ['mirror --require-quiesce', ['--method', 'mirror', '--require-quiesce']],
      ['cold', ['--mode', 'cold']],
      ['--all-disks --require-quiesce', ['--all-disks', '--require-quiesce']],
    ];
    for (const [name, flags] of flows) {
      const results: Array<Awaited<ReturnType<typeof measure>>> = [];
      for (let round = 0; round < rounds; round++) {
        for (const f of readdirSync(out)) rmSync(join(out, f));
        const target = flags.includes('--all-disks') ? out : join(out, 'vda.qcow2');
        const r = await measure(guest, ['vm', 'snapshot', ...flags, guest.name, target], out);
        if (r.status !== 0) throw new Error(`${name}: ${r.stderr}`);
        results.push(r);
      }
      const times = results.map((r) => r.ms).sort((a, b) => a - b);
      const extras = results.map((r) => r.peakExtra).sort((a, b) => a - b);
      console.log(
        `${name.padEnd(30)} time median ${(times[Math.floor(times.length / 2)]! / 1000).toFixed(2)} s (${times.map((t) => (t / 1000).toFixed(2)).join(', ')}); ` +
          `peak extra host space median ${mib(extras[Math.floor(extras.length / 2)]!)} (${extras.map(mib).join(', ')}); outputs ${mib(results[0]!.outputBytes)}`,
      );
    }
  } finally {
    guest.destroy();
  }
}

await main();
