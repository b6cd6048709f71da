/** The checks every VM test makes: the output, the guest afterwards, and that nothing was left behind. */
import { existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect } from 'vitest';
import { checkImage, expectedContent, imageInfo, qemuImg, verifyRegions, visibleRegions, type Region } from './images.js';
import { BASE_REGIONS, DISK_SIZE, TOP_REGIONS, TestGuest, WRITE_AREA, virsh } from './libvirt-guest.js';

/** What must be the same after a snapshot as before it. */
export interface GuestBaseline {
  state: string;
  files: string[];
  inactiveXml: string;
  domains: string[];
}

/** All defined domains but the other test guests (other test files and runs may work beside this one). */
function domainNames(guest: TestGuest): string[] {
  return virsh('list', '--all', '--name')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && (l === guest.name || !l.startsWith('qcowkit-test-')))
    .sort();
}

export function baseline(guest: TestGuest): GuestBaseline {
  return {
    state: guest.state(),
    files: guest.files(),
    inactiveXml: virsh('dumpxml', '--inactive', '--security-info', `--domain=${guest.name}`),
    domains: domainNames(guest),
  };
}

/**
 * The output holds exactly what was written before the snapshot: the first half of the disk compared by
 * qemu-img compare with the expected bytes; the blocks the guest wrote just `before` the snapshot hold exactly
 * those writes; every other 64 KiB block of the second half (where the guest kept writing `during` the
 * snapshot) is still zero or holds one of the writes made to it (a write is atomic with respect to the
 * snapshot). Standalone (no backing file) and clean by qemu-img check.
 */
export function expectOutputAtSnapshot(
  guest: TestGuest,
  output: string,
  writes: { before?: readonly Region[]; during?: readonly Region[] },
  format: 'qcow2' | 'raw' = 'qcow2',
): void {
  const expected = join(guest.dir, 'expected.raw');
  rmSync(expected, { force: true });
  writeFileSync(expected, expectedContent(DISK_SIZE, [...BASE_REGIONS, ...TOP_REGIONS]));
  const half = String(WRITE_AREA.offset);
  const compare = (() => {
    try {
      return qemuImg(
        'compare',
        '-U',
        '--image-opts',
        `driver=raw,offset=0,size=${half},file.driver=${format},file.file.driver=file,file.file.filename=${output}`,
        `driver=raw,offset=0,size=${half},file.driver=file,file.filename=${expected}`,
      );
    } catch (error) {
      return String(error);
    }
  })();
  expect(compare.trim()).toBe('Images are identical.');
  if (format === 'qcow2') {
    checkImage(output);
    expect(imageInfo(output)['backing-filename']).toBeUndefined();
  }
  const raw = join(guest.dir, 'output.raw');
  qemuImg('convert', '-U', '-f', format, '-O', 'raw', output, raw);
  const bytes = readFileSync(raw);
  rmSync(raw);
  rmSync(expected);
  const allowed = new Map<number, Set<number>>();
  for (const w of writes.during ?? []) {
    if (!allowed.has(w.offset)) allowed.set(w.offset, new Set([0]));
    allowed.get(w.offset)!.add(w.pattern);
  }
  // Writes made before the snapshot started: only the last one to each block.
  for (const w of writes.before ?? []) allowed.set(w.offset, new Set([w.pattern]));
  for (let at = WRITE_AREA.offset; at < WRITE_AREA.offset + WRITE_AREA.length; at += WRITE_AREA.block) {
    const block = bytes.subarray(at, at + WRITE_AREA.block);
    const first = block[0]!;
    expect(block.equals(Buffer.alloc(block.length, first)), `output block at ${at} is torn`).toBe(true);
    expect(allowed.get(at) ?? new Set([0]), `output block at ${at} holds 0x${first.toString(16)}`).toContain(first);
  }
}

/**
 * After the snapshot: the guest in its state, no block job, no leftover file, the same domains and the same
 * persistent definition, no managed save image; then (after QEMU flushed its metadata cache) every byte the
 * guest wrote, before and during the snapshot, on its disk, read beside the running QEMU with qemu-io -U.
 */
export function expectGuestIntact(guest: TestGuest, before: GuestBaseline, written: readonly Region[], options: { outputKept?: string } = {}): void {
  expect(guest.state()).toBe(before.state);
  const files = guest.files().filter((f) => options.outputKept === undefined || join(guest.dir, f) !== options.outputKept);
  expect(files).toEqual(before.files);
  // The run's intent log is gone: the guest is back as it was.
  expect(existsSync(guest.stateDir) ? readdirSync(guest.stateDir) : []).toEqual([]);
  expect(domainNames(guest)).toEqual(before.domains);
  expect(virsh('dumpxml', '--inactive', '--security-info', `--domain=${guest.name}`)).toBe(before.inactiveXml);
  expect(virsh('dominfo', `--domain=${guest.name}`)).toMatch(/Managed save:\s+no/);
  if (before.state !== 'shut off') {
    for (const target of ['vda', 'vdb']) expect(virsh('blockjob', `--domain=${guest.name}`, `--path=${target}`, '--raw').trim()).toBe('');
    const live = virsh('dumpxml', `--domain=${guest.name}`);
    expect(live).toContain(`<source file='${guest.top}' index=`);
    expect(live).toContain(`<source file='${guest.base}'/>`);
    // QEMU keeps qcow2 metadata in its cache until a flush: flush, then read the files beside it (-U).
    virsh('qemu-monitor-command', `--domain=${guest.name}`, '--hmp', '--', `qemu-io -d ${TestGuest.DEVICE} "flush"`);
  }
  verifyRegions(guest.top, visibleRegions(DISK_SIZE, [...BASE_REGIONS, ...TOP_REGIONS, ...written]));
  checkImage(guest.top);
  checkImage(guest.base);
}
