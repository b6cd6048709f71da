/**
 * qemu's image locks with a real running guest (libvirt): its qcow2 disk top.qcow2 over base.qcow2, and a raw
 * disk data.raw. Every command is run by qemu-img (qemu-io for `io`) and by qcowkit against the guest's own
 * files: qcowkit must be refused exactly where qemu-img is (same exit status, qemu-img's words) and succeed
 * where it succeeds; nothing refused may change a byte. Writers must be refused on every disk and backing file
 * of the guest; the frozen backing file must stay readable without -U, the active image only with it.
 */
import { createHash } from 'node:crypto';
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { qemuImg as runQemuImg, qemuIo } from '../../../../fixtures/corpus.js';
import { heldLockBytes } from '../../../qcow2/src/test-support/qemu-io-holder.js';
import { TestGuest, useTestGuest, vmTestsEnabled } from '../../../snapshot/src/test-support/libvirt-guest.js';
import { runCli, type Run } from '../test-support/run-cli.js';

const guest = new TestGuest(`qcowkit-test-lock-${process.pid}`);

function sha(file: string): string {
  return createHash('sha256').update(readFileSync(file)).digest('hex');
}

function lockMessage(run: Run): string | undefined {
  return /Failed to get (?:shared )?"[a-z ]+" lock/.exec(run.stderr)?.[0];
}

interface Case {
  args: string[];
  /** Expected to be refused beside the running guest (qemu-img is checked to agree). */
  refused: boolean;
}

describe.skipIf(!vmTestsEnabled())('a running libvirt guest', () => {
  useTestGuest(guest);

  it('holds locks qcowkit respects: writers refused on every image, readers as qemu-img allows them', () => {
    guest.prepare('running');
    const files = [guest.top, guest.base, guest.data];
    // The guest holds its images as qemu-io does: the active ones read-write, the backing file read-only.
    expect(heldLockBytes(guest.top)).toEqual([100, 101, 103, 201, 203]);
    expect(heldLockBytes(guest.base)).toEqual([100, 201, 203]);
    expect(heldLockBytes(guest.data)).toContain(201);

    const out = join(guest.dir, 'out.raw');
    const cases: Case[] = [
      { args: ['io', '-c', 'write 0 4k', guest.top], refused: true },
      { args: ['io', '-f', 'raw', '-c', 'write 0 4k', guest.data], refused: true },
      { args: ['io', '-c', 'write 0 4k', guest.base], refused: true },
      { args: ['snapshot', '-c', 'lock', guest.top], refused: true },
      { args: ['resize', guest.top, '128M'], refused: true },
      { args: ['resize', '-f', 'raw', guest.data, '2M'], refused: true },
      { args: ['commit', guest.top], refused: true },
      { args: ['check', '-r', 'all', guest.base], refused: true },
      { args: ['rebase', '-u', '-b', '', guest.top], refused: true },
      { args: ['convert', '-n', '-O', 'qcow2', guest.base, guest.top], refused: true },
      { args: ['create', '-f', 'qcow2', guest.base, '64M'], refused: true },
      { args: ['info', guest.top], refused: true },
      { args: ['map', guest.top], refused: true },
      { args: ['convert', '-O', 'raw', guest.top, out], refused: true },
      { args: ['info', '-U', guest.top], refused: false },
      { args: ['check', '-U', guest.top], refused: false },
      { args: ['convert', '-U', '-O', 'raw', guest.top, out], refused: false },
      // The backing file never changes while the guest runs: qemu-img reads it without -U, and so must qcowkit.
      { args: ['info', guest.base], refused: false },
      { args: ['check', guest.base], refused: false },
      { args: ['convert', '-O', 'raw', guest.base, out], refused: false },
    ];
    for (const kase of cases) {
      const before = files.map(sha);
      const qemu = kase.args[0] === 'io' ? qemuIo(kase.args.slice(1)) : runQemuImg(kase.args);
      rmSync(out, { force: true });
      const ours = runCli(kase.args);
      rmSync(out, { force: true });
      const context = `${kase.args.join(' ')}: qemu-img ${qemu.status} ${qemu.stderr.trim()} / qcowkit ${ours.status} ${ours.stderr.trim()}`;
      expect(lockMessage(qemu) !== undefined, context).toBe(kase.refused);
      expect(ours.status, context).toBe(qemu.status);
      expect(lockMessage(ours), context).toBe(lockMessage(qemu));
      expect(files.map(sha), context).toEqual(before);
    }
    expect(guest.state()).toBe('running');
  });
});
