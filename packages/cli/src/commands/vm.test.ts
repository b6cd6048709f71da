/**
 * `qcowkit vm`: argument checks without libvirt, then the commands against a real guest
 * (scripts/start-libvirt.sh; skipped locally without libvirt, failing on CI).
 */
import { spawn, spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { TestGuest, useTestGuest, vmTestsEnabled } from '../../../snapshot/src/test-support/libvirt-guest.js';
import { baseline, expectGuestIntact, expectOutputAtSnapshot } from '../../../snapshot/src/test-support/vm-checks.js';

const cli = fileURLToPath(new URL('../../dist/main.js', import.meta.url));

interface Run {
  stdout: string;
  stderr: string;
  status: number;
}

function qcowkit(args: string[], env: NodeJS.ProcessEnv = process.env): Run {
  const r = spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', env });
  if (r.error) throw r.error;
  return { stdout: r.stdout, stderr: r.stderr, status: r.status ?? -1 };
}

/** The same, without blocking this process (the test writes to the guest meanwhile). */
function qcowkitAsync(args: string[], env: NodeJS.ProcessEnv = process.env): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [cli, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ stdout, stderr, status: code ?? -1 }));
  });
}

describe('qcowkit vm: arguments', () => {
  it.each([
    [['vm', 'snapshot', '--quiesce', '--require-quiesce', 'd', '/tmp/x'], '--quiesce and --require-quiesce exclude each other'],
    [['vm', 'snapshot', '--mode', 'warm', 'd', '/tmp/x'], "--mode must be one of auto, live, cold (got 'warm')"],
    [['vm', 'snapshot', '--method', 'copy', 'd', '/tmp/x'], "--method must be one of overlay, mirror (got 'copy')"],
    [['vm', 'snapshot', '-O', 'vmdk', 'd', '/tmp/x'], "-O must be one of qcow2, raw (got 'vmdk')"],
    [['vm', 'snapshot', '-O', 'raw', '-c', 'd', '/tmp/x'], 'Compression not supported for this file format'],
    [['vm', 'disks', '--output', 'xml', 'd'], '--output must be used with human or json as argument.'],
    [['vm', 'snapshot', '--all-disks', '--disk', 'vda', 'd', '/tmp/x'], '--all-disks and --disk exclude each other'],
    [['vm', 'snapshot', '--all-disks', '--method', 'mirror', 'd', '/tmp/x'], '--all-disks takes every disk at one instant with the overlay method; --method mirror copies one disk'],
  ])('%j fails with one line', (args, message) => {
    const r = qcowkit(args);
    expect(r.status).toBe(1);
    expect(r.stderr).toBe(`qcowkit: ${message}\n`);
  });

  it.each([['disks'], ['recover']])('vm %s: a connection that fails is one line naming the domain', (command) => {
    const r = qcowkit(['vm', command, '--connect', 'qemu+unix:///system?socket=/nonexistent/libvirt-sock', 'guest1']);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/^qcowkit: guest1: .*(connect|virsh)/);
    expect(r.stderr.trim().split('\n').length).toBe(1);
  });
});

const guest = new TestGuest(`qcowkit-test-cli-${process.pid}`);

describe.skipIf(!vmTestsEnabled())('qcowkit vm with libvirt', () => {
  useTestGuest(guest);

  it('vm disks: each disk with its chain, running (from the XML) and shut off (from the headers)', () => {
    for (const state of ['running', 'shutoff'] as const) {
      guest.prepare(state);
      const json = qcowkit(['vm', 'disks', '--output', 'json', guest.name]);
      expect(json.stderr).toBe('');
      expect(JSON.parse(json.stdout)).toEqual([
        {
          target: 'vda',
          device: 'disk',
          bus: 'virtio',
          readonly: false,
          chain: [
            { type: 'file', path: guest.top, format: 'qcow2' },
            { type: 'file', path: guest.base, format: 'qcow2' },
          ],
        },
        { target: 'vdb', device: 'disk', bus: 'virtio', readonly: false, chain: [{ type: 'file', path: guest.data, format: 'raw' }] },
      ]);
      const human = qcowkit(['vm', 'disks', guest.name]);
      expect(human.stdout.split('\n')).toEqual([
        'Target  Device  Bus     Format  Image',
        `vda     disk    virtio  qcow2   ${guest.top}`,
        `                        qcow2   └ ${guest.base}`,
        `vdb     disk    virtio  raw     ${guest.data}`,
        '',
      ]);
    }
  });

  it('vm snapshot -p of a running guest: live, the guest writing all the while', async () => {
    guest.prepare('running');
    const before = baseline(guest);
    const output = join(guest.dir, 'out.qcow2');
    const early = await guest.writeBefore();
    const { result, written } = await guest.writeWhile(qcowkitAsync(['vm', 'snapshot', '-p', '--quiesce', guest.name, output], guest.env()));
    expect(result?.stderr).toMatch(/^qcowkit: .*: warning: not quiesced: .*agent is not connected\n$/);
    expect(result?.status).toBe(0);
    expect(result?.stdout).toContain('(100.00/100%)');
    expectOutputAtSnapshot(guest, output, { before: early, during: written });
    expectGuestIntact(guest, before, [...early, ...written], { outputKept: output });
  });

  it('vm snapshot of an unknown domain or disk fails with one line', () => {
    guest.prepare('shutoff');
    const noDomain = qcowkit(['vm', 'snapshot', `${guest.name}-missing`, join(guest.dir, 'x.qcow2')], guest.env());
    expect(noDomain.status).toBe(1);
    expect(noDomain.stderr).toMatch(/^qcowkit: .*-missing: failed to get domain/);
    const noDisk = qcowkit(['vm', 'snapshot', '--disk', 'sdz', guest.name, join(guest.dir, 'x.qcow2')], guest.env());
    expect(noDisk.stderr).toBe(`qcowkit: ${guest.name}: domain ${guest.name} has no disk sdz (it has: vda, vdb)\n`);
  });
});
