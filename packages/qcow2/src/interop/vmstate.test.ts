import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { fixturesDir, isCI, qemuImg, requireQemuImg } from '../../../../fixtures/corpus.js';
import { Qcow2Device } from '../device/qcow2-device.js';
import type { SnapshotEntry } from '../format/snapshot-table.js';
import { openImageFile } from '../node/index.js';

/**
 * Snapshots that carry VM state (guest RAM saved by qemu's savevm, as libvirt takes them on a running guest;
 * fixtures/generate-vmstate.sh made the image). The state lives in the snapshot's own L1 table past the disk:
 * reading, creating and deleting other snapshots must keep it byte for byte, deleting a snapshot must free it,
 * and qemu must still be able to load it.
 */
const dir = join(fixturesDir(), 'vmstate');
const expected = (name: string): string => readFileSync(join(dir, 'expected', name), 'utf8').trim();
const work = mkdtempSync(join(tmpdir(), 'qcowkit-vmstate-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

function copy(): string {
  const file = join(work, `vm-${Math.random().toString(36).slice(2)}.qcow2`);
  copyFileSync(join(dir, 'vmstate.qcow2'), file);
  return file;
}

/** sha256 of a snapshot's VM state, read through the snapshot's L1 table where qemu puts it. */
async function vmStateHash(device: Qcow2Device, snapshot: SnapshotEntry): Promise<string> {
  const image = device.image;
  const l1 = await image.snapshotL1(snapshot);
  const diskSize = snapshot.diskSize ?? image.virtualSize;
  // qemu's qcow2_vm_state_offset: the first L2 table boundary at or past the end of the disk.
  const start = Math.ceil(diskSize / image.layout.l2Coverage) * image.layout.l2Coverage;
  const bytes = new Uint8Array(snapshot.vmStateSize);
  for (const seg of await image.segments(start, bytes.length, l1)) {
    await image.readSegment(seg, bytes.subarray(seg.guestOffset - start, seg.guestOffset - start + seg.length));
  }
  return createHash('sha256').update(bytes).digest('hex');
}

async function sha256OfView(device: Qcow2Device, snapshot?: SnapshotEntry): Promise<string> {
  const view = snapshot === undefined ? device : await device.snapshotView(snapshot);
  const hash = createHash('sha256');
  const chunk = new Uint8Array(4 * 1024 * 1024);
  for (let at = 0; at < view.size; at += chunk.length) {
    const part = chunk.subarray(0, Math.min(chunk.length, view.size - at));
    await view.read(part, at);
    hash.update(part);
  }
  return hash.digest('hex');
}

function hasQemuSystem(): boolean {
  return spawnSync('qemu-system-x86_64', ['--version']).status === 0;
}

/** Starts qemu with -loadvm and quits at once; qemu exits non-zero when the state cannot be loaded. */
function qemuLoadvm(file: string, snapshot: string): { status: number; output: string } {
  const r = spawnSync(
    'qemu-system-x86_64',
    ['-machine', 'accel=kvm:tcg', '-m', '64', '-display', 'none', '-nodefaults', '-drive', `file=${file},if=none,id=drive0,format=qcow2`, '-device', 'virtio-blk-pci,drive=drive0', '-monitor', 'stdio', '-loadvm', snapshot],
    { input: 'info status\nquit\n', encoding: 'utf8', timeout: 60_000 },
  );
  return { status: r.status ?? -1, output: `${r.stdout}${r.stderr}` };
}

describe('snapshots with VM state', () => {
  requireQemuImg();

  it('read: every snapshot view and the VM state fields equal what qemu recorded', async () => {
    const device = await openImageFile(join(dir, 'vmstate.qcow2'));
    try {
      if (!(device instanceof Qcow2Device)) throw new Error('not qcow2');
      const info = JSON.parse(expected('vmstate.qcow2.info.json')) as { snapshots: Array<{ name: string; 'vm-state-size': number; 'vm-clock-sec': number; 'vm-clock-nsec': number }> };
      expect(device.image.snapshots.length).toBe(info.snapshots.length);
      for (const s of info.snapshots) {
        const entry = device.image.findSnapshot(s.name)!;
        expect(entry.vmStateSize).toBe(s['vm-state-size']);
        expect(entry.vmStateSize).toBeGreaterThan(0);
        expect(entry.vmClockNsec).toBe(s['vm-clock-sec'] * 1e9 + s['vm-clock-nsec']);
        expect(entry.icount).toBeUndefined();
        expect(await sha256OfView(device, entry)).toBe(expected(`vmstate.qcow2.snapshot.${s.name}.raw.sha256`));
      }
      expect(await sha256OfView(device)).toBe(expected('vmstate.qcow2.raw.sha256'));
    } finally {
      await device.close();
    }
  });

  it('creating and deleting other snapshots keeps the VM state byte for byte; deleting frees it', async () => {
    const file = copy();
    const device = await openImageFile(file, { writable: true });
    if (!(device instanceof Qcow2Device)) throw new Error('not qcow2');
    const before = new Map<string, string>();
    for (const entry of device.image.snapshots) before.set(entry.name, await vmStateHash(device, entry));
    await device.write(new Uint8Array(70000).fill(0x55), 12345);
    await device.createSnapshot({ name: 'ours' });
    await device.write(new Uint8Array(65536).fill(0x66), 0);
    await device.deleteSnapshot('running-2');
    for (const entry of device.image.snapshots) {
      if (before.has(entry.name)) expect(await vmStateHash(device, entry)).toBe(before.get(entry.name));
    }
    const first = device.image.findSnapshot('running-1')!;
    expect(first.vmStateSize).toBe(JSON.parse(expected('vmstate.qcow2.info.json')).snapshots[0]['vm-state-size']);
    await device.close();
    const check = qemuImg(['check', '--output=json', file]);
    expect(check.status).toBe(0);
    const report = JSON.parse(check.stdout) as { leaks?: number; corruptions?: number };
    expect(report.leaks ?? 0).toBe(0);
    expect(report.corruptions ?? 0).toBe(0);
    // The VM state of running-2 went with it: the file holds fewer allocated clusters than before deleting.
    const list = qemuImg(['snapshot', '-l', file]).stdout;
    expect(list).toMatch(/running-1/);
    expect(list).not.toMatch(/running-2/);
  });

  it('qemu can still load the VM state after qcowkit changed the image', async () => {
    if (!hasQemuSystem()) {
      // qemu-system comes with the libvirt set-up (scripts/start-libvirt.sh); CI must have it.
      expect(isCI(), 'qemu-system-x86_64 is missing on CI').toBe(false);
      return;
    }
    const file = copy();
    const device = await openImageFile(file, { writable: true });
    if (!(device instanceof Qcow2Device)) throw new Error('not qcow2');
    await device.createSnapshot({ name: 'ours' });
    await device.deleteSnapshot('running-1');
    await device.applySnapshot('running-2');
    await device.close();
    const result = qemuLoadvm(file, 'running-2');
    expect(result.output).not.toMatch(/Error|error/);
    expect(result.status).toBe(0);
    expect(result.output).toMatch(/VM status: running/);
  });
});
