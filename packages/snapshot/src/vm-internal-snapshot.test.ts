/**
 * Internal snapshots taken by libvirt on a running guest (`virsh snapshot-create-as`: qemu's savevm, guest RAM
 * included), then changed by the qcowkit engine: issue 4's VM-state case on a real libvirt. What libvirt
 * wrote must read back as qemu reads it, survive qcowkit creating and deleting other snapshots byte for byte,
 * and still load in qemu afterwards; deleting a snapshot with VM state must free it (no leak).
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { Qcow2Device } from '@qcowkit/qcow2/engine';
import type { SnapshotEntry } from '@qcowkit/qcow2/format';
import { openImageFile } from '@qcowkit/qcow2/node';
import { qemuImg } from './test-support/images.js';
import { TestGuest, useTestGuest, virsh, vmTestsEnabled } from './test-support/libvirt-guest.js';

/** The test guest without its raw data disk: libvirt's internal snapshots need every disk to be qcow2. */
class SingleDiskGuest extends TestGuest {
  override domainXml(): string {
    return super.domainXml().replace(/ *<disk type='file' device='disk'>\s*<driver name='qemu' type='raw'\/>[\s\S]*?<\/disk>\n/, '');
  }
}

const guest = new SingleDiskGuest(`qcowkit-test-internal-${process.pid}`);

async function vmStateHash(device: Qcow2Device, snapshot: SnapshotEntry): Promise<string> {
  const image = device.image;
  const l1 = await image.snapshotL1(snapshot);
  const start = Math.ceil((snapshot.diskSize ?? image.virtualSize) / image.layout.l2Coverage) * image.layout.l2Coverage;
  const bytes = new Uint8Array(snapshot.vmStateSize);
  for (const seg of await image.segments(start, bytes.length, l1)) {
    await image.readSegment(seg, bytes.subarray(seg.guestOffset - start, seg.guestOffset - start + seg.length));
  }
  return createHash('sha256').update(bytes).digest('hex');
}

function rawSha(args: string[]): string {
  const out = `${guest.dir}/view-${Math.random().toString(36).slice(2)}.raw`;
  qemuImg('convert', '-U', ...args, '-O', 'raw', guest.top, out);
  const r = spawnSync('sha256sum', [out], { encoding: 'utf8' });
  spawnSync('rm', ['-f', out]);
  return r.stdout.split(' ')[0]!;
}

describe.skipIf(!vmTestsEnabled())('internal snapshots with VM state taken by libvirt', () => {
  useTestGuest(guest);

  it('keeps, frees and reloads the VM state libvirt saved', async () => {
    guest.prepare('running');
    await guest.write({ offset: 0, length: 65536, pattern: 0x5a });
    virsh('snapshot-create-as', `--domain=${guest.name}`, '--name=live-1');
    await guest.write({ offset: 65536, length: 65536, pattern: 0x6b });
    virsh('snapshot-create-as', `--domain=${guest.name}`, '--name=live-2');
    guest.powerOff();

    const device = await openImageFile(guest.top, { writable: true });
    if (!(device instanceof Qcow2Device)) throw new Error('not qcow2');
    const live1 = device.image.findSnapshot('live-1')!;
    const live2 = device.image.findSnapshot('live-2')!;
    expect(live1.vmStateSize).toBeGreaterThan(0);
    expect(live2.vmStateSize).toBeGreaterThan(0);
    // Our views of libvirt's snapshots equal qemu's.
    for (const entry of [live1, live2]) {
      const view = await device.snapshotView(entry);
      const hash = createHash('sha256');
      const chunk = new Uint8Array(4 * 1024 * 1024);
      for (let at = 0; at < view.size; at += chunk.length) {
        const part = chunk.subarray(0, Math.min(chunk.length, view.size - at));
        await view.read(part, at);
        hash.update(part);
      }
      expect(hash.digest('hex')).toBe(rawSha(['-l', `snapshot.name=${entry.name}`]));
    }
    const stateOf2 = await vmStateHash(device, live2);
    await device.write(new Uint8Array(65536).fill(0x7c), 131072);
    await device.createSnapshot({ name: 'ours' });
    await device.deleteSnapshot('live-1');
    expect(await vmStateHash(device, device.image.findSnapshot('live-2')!)).toBe(stateOf2);
    await device.close();

    const check = JSON.parse(qemuImg('check', '--output=json', guest.top)) as { leaks?: number; corruptions?: number };
    expect(check.leaks ?? 0).toBe(0);
    expect(check.corruptions ?? 0).toBe(0);
    // libvirt's own view: its snapshot metadata still names live-2, which qemu can revert to (loads the RAM).
    virsh('snapshot-revert', `--domain=${guest.name}`, '--snapshotname=live-2', '--running');
    expect(guest.state()).toBe('running');
    guest.powerOff();
  });
});
