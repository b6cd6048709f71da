import { describe, expect, it } from 'vitest';
import { HypervisorError } from '../errors.js';
import { LibvirtHypervisor } from './libvirt-hypervisor.js';
import { escapeDiskspecValue, parseBlockJobRaw, virshError, type VirshResult } from './virsh.js';

const failed = (stderr: string, stdout = ''): VirshResult => ({ stdout, stderr, exitCode: 1 });

describe('virshError', () => {
  it.each([
    ["error: failed to get domain 'nope'\n", 'NO_DOMAIN'],
    ["error: failed to connect to the hypervisor\nerror: Failed to connect socket to '/var/run/libvirt/libvirt-sock': No such file or directory\n", 'CONNECT_FAILED'],
    ['error: Requested operation is not valid: domain is not transient\n', 'OPERATION_INVALID'],
    ['error: argument unsupported: QEMU guest agent is not configured\n', 'AGENT_UNAVAILABLE'],
    ['error: Unable to freeze filesystems\nerror: Guest agent is not responding: QEMU guest agent is not connected\n', 'AGENT_UNAVAILABLE'],
    ['error: invalid argument: disk vda does not have an active block job\n', 'NO_BLOCK_JOB'],
    ["error: command 'blockcopy' doesn't support option --transient-job\n", 'UNSUPPORTED'],
    ['error: unsupported flags (0x4) in function qemuDomainBlockCopy\n', 'UNSUPPORTED'],
    ['error: Timed out during operation: cannot acquire state change lock\n', 'TIMEOUT'],
    ['error: internal error: something else\n', 'FAILED'],
  ])('maps %j to %s', (stderr, code) => {
    const error = virshError(['x'], failed(stderr));
    expect(error).toBeInstanceOf(HypervisorError);
    expect(error.code).toBe(code);
    expect(error.message).not.toMatch(/^error:/);
    expect(error.command).toEqual(['virsh', 'x']);
  });

  it('joins virsh context and libvirt message into one line', () => {
    expect(virshError(['start'], failed("error: Failed to start domain 'd'\nerror: Requested operation is not valid: domain is already running\n")).message).toBe(
      "Failed to start domain 'd': Requested operation is not valid: domain is already running",
    );
  });

  it('reads a failed block job wait from stdout', () => {
    const error = virshError(['blockcopy'], failed('', '\nBlock Copy: [ 40 %]\nCopy failed\n'));
    expect(error.code).toBe('BLOCK_JOB_FAILED');
    expect(error.message).toContain('Copy failed');
  });
});

describe('parseBlockJobRaw', () => {
  it('reads a job', () => {
    expect(parseBlockJobRaw(' type=Block Copy\n bandwidth=0\n cur=65536\n end=65536\n')).toEqual({ type: 'Block Copy', bandwidth: 0, cur: 65536, end: 65536 });
  });
  it('reads no job as undefined', () => {
    expect(parseBlockJobRaw('\n')).toBeUndefined();
  });
  it('refuses garbage numbers', () => {
    expect(() => parseBlockJobRaw(' type=Block Copy\n cur=-1\n end=x\n')).toThrow(/bad cur/);
  });
});

describe('escapeDiskspecValue', () => {
  it('doubles commas', () => {
    expect(escapeDiskspecValue('/a,b,,c')).toBe('/a,,b,,,,c');
  });
});

describe('LibvirtHypervisor command lines', () => {
  function recording(outputs: Record<string, VirshResult> = {}): { hv: LibvirtHypervisor; calls: string[][] } {
    const calls: string[][] = [];
    const hv = new LibvirtHypervisor({
      uri: 'qemu:///session',
      runner: async (args) => {
        calls.push([...args]);
        return outputs[args[2]!] ?? { stdout: '', stderr: '', exitCode: 0 };
      },
    });
    return { hv, calls };
  }

  /** A running domain whose vda has a ready block job (what blockcopy and blockcommit wait for). */
  const READY_XML = `<domain type='qemu'><name>d</name><devices><disk type='file' device='disk'><driver type='qcow2'/>
    <source file='/tmp/a.qcow2'/><backingStore/><mirror type='file' file='/tmp/d.qcow2' job='copy' ready='yes'/>
    <target dev='vda' bus='virtio'/></disk></devices></domain>`;

  it('passes every value as one argument, named, after -c URI', async () => {
    const { hv, calls } = recording({ dumpxml: { stdout: READY_XML, stderr: '', exitCode: 0 } });
    const domain = '--evil name; rm -rf /';
    await hv.snapshotDiskOnly(domain, {
      overlays: [
        { target: 'vda', overlay: '/tmp/a b,c.qcow2' },
        { target: 'vdc', overlay: '/tmp/c.qcow2' },
      ],
      otherTargets: ['vdb'],
      quiesce: true,
    });
    await hv.blockCopy(domain, 'vda', '/tmp/d.qcow2', { shallow: true, reuseExternal: true, transientJob: true, format: 'qcow2' });
    await hv.blockCommitActive(domain, 'vda');
    await hv.pivotBlockJob(domain, 'vda');
    await hv.monitorCommand(domain, 'qemu-io -d x "write 0 1"', { hmp: true });
    const dumpxml = ['-c', 'qemu:///session', 'dumpxml', `--domain=${domain}`];
    expect(calls).toEqual([
      [
        ...['-c', 'qemu:///session', 'snapshot-create-as', `--domain=${domain}`, '--disk-only', '--no-metadata', '--atomic', '--quiesce'],
        ...['--diskspec=vda,snapshot=external,file=/tmp/a b,,c.qcow2', '--diskspec=vdc,snapshot=external,file=/tmp/c.qcow2', '--diskspec=vdb,snapshot=no'],
      ],
      // No --wait: the job is polled until ready, so a dead caller leaves no virsh behind that acts later.
      ['-c', 'qemu:///session', 'blockcopy', `--domain=${domain}`, '--path=vda', '--dest=/tmp/d.qcow2', '--format=qcow2', '--shallow', '--reuse-external', '--transient-job'],
      dumpxml,
      ['-c', 'qemu:///session', 'blockcommit', `--domain=${domain}`, '--path=vda', '--active', '--shallow'],
      dumpxml,
      ['-c', 'qemu:///session', 'blockjob', `--domain=${domain}`, '--path=vda', '--pivot'],
      ['-c', 'qemu:///session', 'qemu-monitor-command', `--domain=${domain}`, '--hmp', '--', 'qemu-io -d x "write 0 1"'],
    ]);
  });

  it('waits for a block job to be ready, and fails when it ends before', async () => {
    let polls = 0;
    const notReady = READY_XML.replace(" ready='yes'", '');
    const hv = new LibvirtHypervisor({
      runner: async (args) => {
        if (args[2] === 'dumpxml') return { stdout: ++polls < 3 ? notReady : READY_XML, stderr: '', exitCode: 0 };
        return { stdout: '', stderr: '', exitCode: 0 };
      },
    });
    await hv.waitBlockJobReady('d', 'vda');
    expect(polls).toBe(3);
    const gone = new LibvirtHypervisor({
      runner: async (args) => ({ stdout: args[2] === 'dumpxml' ? READY_XML.replace(/<mirror[^>]*\/>/, '') : '', stderr: '', exitCode: 0 }),
    });
    await expect(gone.waitBlockJobReady('d', 'vda')).rejects.toMatchObject({ code: 'BLOCK_JOB_FAILED' });
  });

  it("reads the agent's freeze status", async () => {
    const { hv } = recording({ 'qemu-agent-command': { stdout: '{"return":"frozen"}\n', stderr: '', exitCode: 0 } });
    expect(await hv.fsFrozen('d')).toBe(true);
    const { hv: thawed } = recording({ 'qemu-agent-command': { stdout: '{"return":"thawed"}', stderr: '', exitCode: 0 } });
    expect(await thawed.fsFrozen('d')).toBe(false);
    const { hv: odd } = recording({ 'qemu-agent-command': { stdout: 'nonsense', stderr: '', exitCode: 0 } });
    await expect(odd.fsFrozen('d')).rejects.toMatchObject({ code: 'BAD_OUTPUT' });
  });

  it('reads dominfo and the domain type', async () => {
    const { hv } = recording({
      // virsh 9.0's dominfo lines.
      dominfo: {
        stdout: 'Id:             2\nName:           d\nUUID:           6143cbd8-2819-4953-9bdc-24dcde625ade\nState:          idle\nPersistent:     no\nManaged save:   yes\n',
        stderr: '',
        exitCode: 0,
      },
      dumpxml: { stdout: "<domain type='qemu'><name>d</name></domain>", stderr: '', exitCode: 0 },
    });
    expect(await hv.domainInfo('d')).toEqual({ name: 'd', state: 'running', persistent: false, virtType: 'qemu', uuid: '6143cbd8-2819-4953-9bdc-24dcde625ade', managedSave: true });
  });

  it('reads domstate', async () => {
    const { hv } = recording({ domstate: { stdout: 'shut off\n\n', stderr: '', exitCode: 0 } });
    expect(await hv.domainState('d')).toBe('shutoff');
    const { hv: odd } = recording({ domstate: { stdout: 'dancing\n', stderr: '', exitCode: 0 } });
    await expect(odd.domainState('d')).rejects.toMatchObject({ code: 'BAD_OUTPUT' });
  });

  it('turns virsh failures into HypervisorError', async () => {
    const { hv } = recording({ suspend: failed("error: failed to get domain 'd'\n") });
    await expect(hv.suspend('d')).rejects.toMatchObject({ name: 'HypervisorError', code: 'NO_DOMAIN' });
  });

  it('reports unreadable XML as BAD_OUTPUT', async () => {
    const { hv } = recording({ dumpxml: { stdout: '<domain', stderr: '', exitCode: 0 } });
    await expect(hv.disks('d')).rejects.toMatchObject({ code: 'BAD_OUTPUT' });
  });

  it('treats a missing virsh as VIRSH_NOT_FOUND', async () => {
    const { execFileRunner } = await import('./virsh.js');
    const hv = new LibvirtHypervisor({ runner: execFileRunner('/nonexistent/virsh') });
    await expect(hv.listDomains()).rejects.toMatchObject({ code: 'VIRSH_NOT_FOUND' });
  });
});
