/**
 * Every writing command, as a kill scenario for the kill harness (kill-harness.ts). A new writer joins with one
 * line in `killScenarios`: its name, its qcowkit arguments, the fixtures it needs and the data rule of each
 * image it writes, e.g.
 *
 *     { name: 'amend', args: ['amend', '-o', 'lazy_refcounts=on', 'disk.qcow2'], fixtures: ['disk.qcow2'], images: { 'disk.qcow2': 'same' } },
 *
 * Fixtures are made once per run by `makeKillFixtures` with qemu-img and qemu-io (add one there when no existing
 * image fits).
 */
import { spawnSync } from 'node:child_process';
import { closeSync, openSync, readSync, statSync, truncateSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import type { KillScenario } from './kill-harness.js';

const D = 'disk.qcow2';
const BM = 'bitmaps.qcow2';

export const killScenarios: KillScenario[] = [
  { name: 'create', args: ['create', '-f', 'qcow2', '-o', 'preallocation=metadata', 'new.qcow2', '64M'], fixtures: [], images: { 'new.qcow2': 'made' } },
  { name: 'convert', args: ['convert', '-O', 'qcow2', D, 'out.qcow2'], fixtures: [D], images: { 'out.qcow2': 'made' } },
  { name: 'convert -c (zlib)', args: ['convert', '-c', '-O', 'qcow2', D, 'out.qcow2'], fixtures: [D], images: { 'out.qcow2': 'made' } },
  { name: 'convert -c (zstd)', args: ['convert', '-c', '-O', 'qcow2', '-o', 'compression_type=zstd', D, 'out.qcow2'], fixtures: [D], images: { 'out.qcow2': 'made' } },
  { name: 'io write', args: ['io', '-c', 'write -P 0xab 3M 6M', D], fixtures: [D], images: { [D]: 'old-or-new' } },
  { name: 'io write -z', args: ['io', '-c', 'write -z 0 6M', D], fixtures: [D], images: { [D]: 'old-or-new' } },
  { name: 'io discard', args: ['io', '-c', 'discard 0 24M', D], fixtures: [D], images: { [D]: 'old-or-new' } },
  { name: 'io write -c', args: ['io', '-c', 'write -c -P 0xcd 40M 2M', D], fixtures: [D], images: { [D]: 'old-or-new' } },
  { name: 'io write (512-byte clusters, 64-bit refcounts)', args: ['io', '-c', 'write -P 0xab 512k 6M', 'c512r64.qcow2'], fixtures: ['c512r64.qcow2'], images: { 'c512r64.qcow2': 'old-or-new' } },
  { name: 'snapshot -c', args: ['snapshot', '-c', 'new', D], fixtures: [D], images: { [D]: 'same' }, snapshots: true },
  { name: 'snapshot -d', args: ['snapshot', '-d', 'snap1', D], fixtures: [D], images: { [D]: 'same' }, snapshots: true },
  { name: 'snapshot -a', args: ['snapshot', '-a', 'snap1', D], fixtures: [D], images: { [D]: 'whole' }, snapshots: true },
  { name: 'commit', args: ['commit', 'top.qcow2'], fixtures: ['base.qcow2', 'top.qcow2'], images: { 'top.qcow2': 'same', 'base.qcow2': 'old-or-new' } },
  { name: 'rebase', args: ['rebase', '-b', 'newbase.qcow2', '-F', 'qcow2', 'top.qcow2'], fixtures: ['base.qcow2', 'top.qcow2', 'newbase.qcow2'], images: { 'top.qcow2': 'same' } },
  { name: 'rebase -u', args: ['rebase', '-u', '-b', 'newbase.qcow2', '-F', 'qcow2', 'top.qcow2'], fixtures: ['base.qcow2', 'top.qcow2', 'newbase.qcow2'], images: { 'top.qcow2': 'whole' } },
  { name: 'resize (grow)', args: ['resize', D, '4G'], fixtures: [D], images: { [D]: 'whole' } },
  { name: 'resize (shrink)', args: ['resize', '--shrink', D, '16M'], fixtures: [D], images: { [D]: 'prefix' } },
  { name: 'check -r leaks', args: ['check', '-r', 'leaks', 'leaky.qcow2'], fixtures: ['leaky.qcow2'], images: { 'leaky.qcow2': 'same' } },
  { name: 'check -r all', args: ['check', '-r', 'all', 'leaky.qcow2'], fixtures: ['leaky.qcow2'], images: { 'leaky.qcow2': 'same' } },
  // A raw disk read from a pipe (size = bytes read), the output written as the stream arrives.
  { name: 'convert from stdin', args: ['convert', '-f', 'raw', '-O', 'qcow2', '-', 'out.qcow2'], fixtures: ['disk.raw'], stdin: 'disk.raw', images: { 'out.qcow2': 'made' } },
  { name: 'dd', args: ['dd', '-O', 'qcow2', `if=${D}`, 'of=dd.qcow2', 'bs=1M'], fixtures: [D], images: { 'dd.qcow2': 'made' } },
  // amend: every step a switch; the guest data and the snapshots never change.
  { name: 'amend refcount_bits=64', args: ['amend', '-o', 'refcount_bits=64', D], fixtures: [D], images: { [D]: 'same' }, snapshots: true },
  { name: 'amend compat=0.10', args: ['amend', '-o', 'compat=0.10', D], fixtures: [D], images: { [D]: 'same' }, snapshots: true },
  { name: 'amend compat=1.1,lazy_refcounts=on,refcount_bits=4 (from v2)', args: ['amend', '-o', 'compat=1.1,lazy_refcounts=on,refcount_bits=4', 'v2.qcow2'], fixtures: ['v2.qcow2'], images: { 'v2.qcow2': 'same' }, snapshots: true },
  // Persistent bitmaps: their changes are switches; guest writes keep them true (in use while writing).
  { name: 'bitmap --add --merge', args: ['bitmap', '--add', '--merge', 'fine', BM, 'new'], fixtures: [BM], images: { [BM]: 'same' } },
  { name: 'bitmap --clear --remove', args: ['bitmap', '--clear', '--remove', BM, 'fine'], fixtures: [BM], images: { [BM]: 'same' } },
  { name: 'io write (tracked bitmaps)', args: ['io', '-c', 'write -P 0xab 3M 6M', '-c', 'write -z 20M 1M', BM], fixtures: [BM], images: { [BM]: 'old-or-new' } },
  { name: 'convert --bitmaps', args: ['convert', '--bitmaps', '-O', 'qcow2', BM, 'out.qcow2'], fixtures: [BM], images: { 'out.qcow2': 'made' } },
  // The cloud formats: a killed convert leaves no image qemu-img opens as the format (not made) or the whole one.
  { name: 'convert -O vpc', args: ['convert', '-O', 'vpc', D, 'out.vhd'], fixtures: [D], images: { 'out.vhd': 'made' }, formats: { 'out.vhd': 'vpc' } },
  { name: 'convert -O vpc (fixed, force_size)', args: ['convert', '-O', 'vpc', '-o', 'subformat=fixed,force_size', D, 'out.vhd'], fixtures: [D], images: { 'out.vhd': 'made' }, formats: { 'out.vhd': 'vpc' } },
  { name: 'create -f vpc', args: ['create', '-f', 'vpc', 'new.vhd', '64M'], fixtures: [], images: { 'new.vhd': 'made' }, formats: { 'new.vhd': 'vpc' } },
  { name: 'convert -O vmdk', args: ['convert', '-O', 'vmdk', D, 'out.vmdk'], fixtures: [D], images: { 'out.vmdk': 'made' }, formats: { 'out.vmdk': 'vmdk' } },
  { name: 'convert -O vhdx', args: ['convert', '-O', 'vhdx', D, 'out.vhdx'], fixtures: [D], images: { 'out.vhdx': 'made' }, formats: { 'out.vhdx': 'vhdx' } },
  { name: 'convert -O vhdx (fixed)', args: ['convert', '-O', 'vhdx', '-o', 'subformat=fixed', D, 'out.vhdx'], fixtures: [D], images: { 'out.vhdx': 'made' }, formats: { 'out.vhdx': 'vhdx' } },
  { name: 'convert -O vmdk (streamOptimized)', args: ['convert', '-O', 'vmdk', '-o', 'subformat=streamOptimized', D, 'out.vmdk'], fixtures: [D], images: { 'out.vmdk': 'made' }, formats: { 'out.vmdk': 'vmdk' } },
];

function must(command: string, args: string[], cwd: string): void {
  const r = spawnSync(command, args, { cwd, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${command} ${args.join(' ')}: ${r.stdout}${r.stderr}`);
}

function qemuIo(dir: string, image: string, commands: string[]): void {
  must('qemu-io', ['-f', 'qcow2', ...commands.flatMap((c) => ['-c', c]), image], dir);
}

/**
 * Gives `count` clusters appended to the file a refcount of 1 with nothing pointing at them: leaked clusters,
 * as a crash leaves them (16-bit refcounts, the clusters within the first refcount block).
 */
function addLeaks(file: string, count: number): void {
  const fd = openSync(file, 'r+');
  try {
    const header = Buffer.alloc(104);
    readSync(fd, header, 0, header.length, 0);
    const clusterSize = 2 ** header.readUInt32BE(20);
    const tableOffset = Number(header.readBigUInt64BE(48));
    if (header.readUInt32BE(96) !== 4) throw new Error('addLeaks wants 16-bit refcounts');
    const entry = Buffer.alloc(8);
    readSync(fd, entry, 0, 8, tableOffset);
    const blockOffset = Number(entry.readBigUInt64BE(0));
    const first = Math.ceil(statSync(file).size / clusterSize);
    if (first + count > clusterSize / 2) throw new Error('addLeaks: clusters outside the first refcount block');
    truncateSync(file, (first + count) * clusterSize);
    const one = Buffer.from([0, 1]);
    for (let c = first; c < first + count; c++) writeSync(fd, one, 0, 2, blockOffset + c * 2);
  } finally {
    closeSync(fd);
  }
}

/**
 * The images the scenarios start from, made with qemu-img and qemu-io in `dir`:
 * - disk.qcow2: 64 MiB, data in several places, compressed clusters, zeroed clusters, a qemu-made snapshot
 *   (snap1) and changes after it (so clusters are shared and COPIED flags matter);
 * - c512r64.qcow2: 512-byte clusters with 64-bit refcounts (writes must grow refcount structures);
 * - base.qcow2 ← top.qcow2, and newbase.qcow2 (for commit and rebase);
 * - v2.qcow2: compat=0.10 with a snapshot (for amend's upgrade);
 * - bitmaps.qcow2: enabled persistent bitmaps (64 KiB and 512-byte granularity) and a disabled one, written
 *   through qemu-io so they hold bits;
 * - leaky.qcow2: clean but for 40 leaked clusters.
 */
export function makeKillFixtures(dir: string): void {
  must('qemu-img', ['create', '-q', '-f', 'qcow2', D, '64M'], dir);
  qemuIo(dir, D, ['write -P 0x11 0 4M', 'write -c -P 0x22 8M 1M', 'write -P 0x33 20M 2M', 'write -P 0x34 30M 64k']);
  must('qemu-img', ['snapshot', '-c', 'snap1', D], dir);
  qemuIo(dir, D, ['write -P 0x44 1M 2M', 'write -z 21M 512k', 'write -P 0x45 50M 1M']);
  must('qemu-img', ['convert', '-O', 'raw', D, 'disk.raw'], dir);

  must('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=512,refcount_bits=64', 'c512r64.qcow2', '16M'], dir);
  qemuIo(dir, 'c512r64.qcow2', ['write -P 0x11 0 1M']);

  must('qemu-img', ['create', '-q', '-f', 'qcow2', 'base.qcow2', '64M'], dir);
  qemuIo(dir, 'base.qcow2', ['write -P 0x55 0 8M', 'write -P 0x56 40M 4M']);
  must('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', 'top.qcow2'], dir);
  qemuIo(dir, 'top.qcow2', ['write -P 0x66 2M 4M', 'write -P 0x67 30M 2M', 'write -z 41M 1M']);
  must('qemu-img', ['create', '-q', '-f', 'qcow2', 'newbase.qcow2', '64M'], dir);
  qemuIo(dir, 'newbase.qcow2', ['write -P 0x88 0 16M']);

  must('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', 'v2.qcow2', '32M'], dir);
  qemuIo(dir, 'v2.qcow2', ['write -P 0x21 0 2M']);
  must('qemu-img', ['snapshot', '-c', 'snap1', 'v2.qcow2'], dir);
  qemuIo(dir, 'v2.qcow2', ['write -P 0x22 1M 2M']);

  must('qemu-img', ['create', '-q', '-f', 'qcow2', BM, '64M'], dir);
  must('qemu-img', ['bitmap', '--add', BM, 'a'], dir);
  must('qemu-img', ['bitmap', '--add', '-g', '512', BM, 'fine'], dir);
  must('qemu-img', ['bitmap', '--add', '--disable', BM, 'off'], dir);
  qemuIo(dir, BM, ['write -P 0x31 0 2M', 'write -P 0x32 30M 1M']);

  must('qemu-img', ['create', '-q', '-f', 'qcow2', 'leaky.qcow2', '64M'], dir);
  qemuIo(dir, 'leaky.qcow2', ['write -P 0x11 0 4M', 'write -P 0x12 32M 1M']);
  addLeaks(join(dir, 'leaky.qcow2'), 40);
}
