/**
 * Real libvirt guests for the VM tests: tiny (64 MiB of RAM, no OS: SeaBIOS finds nothing to boot and waits),
 * with a qcow2 disk over a qcow2 backing file, a small raw second disk and a guest agent channel with no agent
 * behind it. Writes "by the guest" come from the host through QEMU's HMP `qemu-io` on the disk's device, so
 * they take the guest's own I/O path (the device's BlockBackend) whatever image is on top at that moment.
 *
 * Needs libvirtd with the QEMU driver (scripts/start-libvirt.sh). Locally the VM tests skip without it; with
 * CI set they fail instead.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isCI } from '../../../../fixtures/corpus.js';
import { afterAll, beforeAll, beforeEach } from 'vitest';
import { pidExists } from '../intent/owner.js';
import { escapeXml } from '../xml/xml-reader.js';
import { LibvirtHypervisor } from '../libvirt/libvirt-hypervisor.js';
import { makeChain, MiB, type Region } from './images.js';

/** The libvirt connection of the VM tests (QCOWKIT_TEST_LIBVIRT_URI overrides it). */
export const URI = process.env.QCOWKIT_TEST_LIBVIRT_URI ?? 'qemu:///system';

export interface LibvirtStatus {
  available: boolean;
  reason: string;
  /** 'kvm' when /dev/kvm works for QEMU here, else 'qemu' (TCG). */
  virtType: 'kvm' | 'qemu';
}

let status: LibvirtStatus | undefined;

export function libvirtStatus(): LibvirtStatus {
  if (status !== undefined) return status;
  const version = spawnSync('virsh', ['-c', URI, 'version'], { encoding: 'utf8', timeout: 20_000 });
  if (version.error || version.status !== 0) {
    const reason = version.error ? `virsh: ${version.error.message}` : (version.stderr || version.stdout).trim();
    status = { available: false, reason: `libvirt is not available at ${URI} (${reason}); run scripts/start-libvirt.sh as root`, virtType: 'qemu' };
    return status;
  }
  const kvm = spawnSync('virsh', ['-c', URI, 'domcapabilities', '--virttype', 'kvm'], { encoding: 'utf8', timeout: 20_000 });
  status = { available: true, reason: '', virtType: kvm.status === 0 && existsSync('/dev/kvm') ? 'kvm' : 'qemu' };
  return status;
}

/** Locally: skip without libvirt. On CI: the VM tests must run, so their absence is a failure. */
export function vmTestsEnabled(): boolean {
  return libvirtStatus().available || isCI();
}

export function virsh(...args: string[]): string {
  const r = spawnSync('virsh', ['-c', URI, ...args], { encoding: 'utf8' });
  if (r.error) throw r.error;
  if (r.status !== 0) throw new Error(`virsh ${args.join(' ')}: ${r.stderr.trim()}`);
  return r.stdout;
}

function virshQuiet(...args: string[]): void {
  spawnSync('virsh', ['-c', URI, ...args], { encoding: 'utf8' });
}

export const DISK_SIZE = 64 * MiB;
/** Written before each snapshot, into the first half of the disk: base, then top over part of it. */
export const BASE_REGIONS: Region[] = [
  { offset: 0, length: 4 * MiB, pattern: 0x11 },
  { offset: 10 * MiB, length: 3 * MiB, pattern: 0x12 },
  { offset: 30 * MiB, length: 2 * MiB, pattern: 0x13 },
];
export const TOP_REGIONS: Region[] = [
  { offset: 2 * MiB, length: 4 * MiB, pattern: 0x21 },
  { offset: 20 * MiB, length: 1 * MiB, pattern: 0x22 },
  { offset: 31 * MiB, length: 64 * 1024, pattern: 0x23 },
];
/**
 * Guest writes go to the second half, 64 KiB each, so the first half stays as it was: those made just before a
 * snapshot (still in QEMU's caches) into its last PRE_BLOCKS blocks, those made during it into the others.
 */
export const WRITE_AREA = { offset: 32 * MiB, length: 32 * MiB, block: 64 * 1024 };
export const PRE_BLOCKS = 16;

export class TestGuest {
  readonly dir: string;
  readonly base: string;
  readonly top: string;
  readonly data: string;
  /** $XDG_STATE_HOME of the qcowkit processes the tests run on this guest. */
  readonly stateHome: string;
  /** The intent logs of the runs on this guest (empty whenever the guest is back as it was). */
  readonly stateDir: string;
  readonly hypervisor = new LibvirtHypervisor({ uri: URI });

  constructor(readonly name: string) {
    this.dir = join(tmpdir(), `qcowkit-vm-${name}`);
    this.stateHome = join(tmpdir(), `qcowkit-vm-state-${name}`);
    this.stateDir = join(this.stateHome, 'qcowkit', 'vm');
    this.base = join(this.dir, 'base.qcow2');
    this.top = join(this.dir, 'top.qcow2');
    this.data = join(this.dir, 'data.raw');
  }

  /** The environment of a qcowkit process working on this guest: its intent logs go to stateDir. */
  env(): NodeJS.ProcessEnv {
    return { ...process.env, XDG_STATE_HOME: this.stateHome };
  }

  domainXml(): string {
    const { virtType } = libvirtStatus();
    return `<domain type='${virtType}'>
  <name>${escapeXml(this.name)}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='${escapeXml(this.top)}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='${escapeXml(this.data)}'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <channel type='unix'>
      <source mode='bind'/>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <memballoon model='none'/>
  </devices>
</domain>
`;
  }

  /** Removes any leftover of an earlier run, then defines the domain (persistent, shut off). */
  create(): void {
    TestGuest.removeStale();
    this.destroy();
    mkdirSync(this.dir, { recursive: true });
    this.resetDisks();
    const xmlFile = join(this.dir, 'domain.xml');
    writeFileSync(xmlFile, this.domainXml());
    virsh('define', `--file=${xmlFile}`);
    rmSync(xmlFile);
  }

  /** Fresh images with the known content (the guest must be shut off). */
  resetDisks(): void {
    for (const f of readdirSync(this.dir)) rmSync(join(this.dir, f), { force: true, recursive: true });
    makeChain(this.base, this.top, DISK_SIZE, BASE_REGIONS, TOP_REGIONS);
    writeFileSync(this.data, Buffer.alloc(MiB, 0x77));
  }

  /** Shut off (no managed save image), fresh disks, then brought to `state`. */
  prepare(state: 'running' | 'paused' | 'shutoff'): void {
    this.powerOff();
    this.resetDisks();
    if (state !== 'shutoff') virsh('start', `--domain=${this.name}`, ...(state === 'paused' ? ['--paused'] : []));
  }

  powerOff(): void {
    virshQuiet('destroy', `--domain=${this.name}`);
    virshQuiet('managedsave-remove', `--domain=${this.name}`);
  }

  state(): string {
    return virsh('domstate', `--domain=${this.name}`).trim();
  }

  /** Files in the test directory (temporary overlays and deltas would show up here). */
  files(): string[] {
    return readdirSync(this.dir).sort();
  }

  /** Test domains (qcowkit-test-KIND-PID) left by test processes that no longer exist, e.g. killed runs. */
  static removeStale(): void {
    const names = spawnSync('virsh', ['-c', URI, 'list', '--all', '--name'], { encoding: 'utf8' }).stdout ?? '';
    for (const name of names.split('\n').map((n) => n.trim())) {
      const match = /^qcowkit-test-[a-z]+-(\d+)$/.exec(name);
      if (match === null || pidExists(Number(match[1]))) continue;
      new TestGuest(name).destroy();
    }
  }

  /** Destroys and undefines the domain and removes its files; safe to call in any state, twice. */
  destroy(): void {
    virshQuiet('destroy', `--domain=${this.name}`);
    virshQuiet('undefine', `--domain=${this.name}`, '--managed-save', '--snapshots-metadata', '--nvram');
    rmSync(this.dir, { recursive: true, force: true });
    rmSync(this.stateHome, { recursive: true, force: true });
  }

  /** The QOM path of the disk's virtio-blk device, which HMP qemu-io writes through (-d). */
  static readonly DEVICE = '/machine/peripheral/virtio-disk0/virtio-backend';

  /** One write by the guest, through QEMU's own I/O path; throws when QEMU refused it. */
  async write(region: Region): Promise<void> {
    const hex = `0x${region.pattern.toString(16).padStart(2, '0')}`;
    const out = await this.hypervisor.monitorCommand(this.name, `qemu-io -d ${TestGuest.DEVICE} "write -P ${hex} ${region.offset} ${region.length}"`, { hmp: true });
    // qemu-io prints to QEMU's stdout, not to the monitor: the monitor only answers with errors.
    if (out.trim() !== '') throw new Error(`HMP qemu-io on ${this.name}: ${out.trim()}`);
  }

  /**
   * Writes by the guest right before a snapshot, one per block of the last PRE_BLOCKS blocks of WRITE_AREA:
   * they are in QEMU's caches (data and qcow2 metadata) when the snapshot starts, and must be in the output.
   */
  async writeBefore(): Promise<Region[]> {
    const written: Region[] = [];
    const first = WRITE_AREA.offset + WRITE_AREA.length - PRE_BLOCKS * WRITE_AREA.block;
    for (let i = 0; i < PRE_BLOCKS; i++) {
      const region = { offset: first + i * WRITE_AREA.block, length: WRITE_AREA.block, pattern: 0xc0 + i };
      await this.write(region);
      written.push(region);
    }
    return written;
  }

  /**
   * Keeps the guest writing while `during` runs: 64 KiB writes into WRITE_AREA, one after another, each with
   * its own offset and pattern. Returns the writes QEMU accepted (those must be on the disk afterwards).
   */
  async writeWhile<T>(during: Promise<T>): Promise<{ result: T | undefined; error: unknown; written: Region[]; refused: number }> {
    let done = false;
    const written: Region[] = [];
    let refused = 0;
    const writer = (async () => {
      for (let i = 0; !done; i++) {
        const blocks = WRITE_AREA.length / WRITE_AREA.block - PRE_BLOCKS;
        const region = { offset: WRITE_AREA.offset + (i % blocks) * WRITE_AREA.block, length: WRITE_AREA.block, pattern: 0x40 + (i % 0x80) };
        try {
          await this.write(region);
          written.push(region);
        } catch {
          refused++;
          await new Promise((resolve) => setTimeout(resolve, 20));
        }
      }
    })();
    let result: T | undefined;
    let error: unknown;
    try {
      result = await during;
    } catch (e) {
      error = e;
    } finally {
      done = true;
      await writer;
    }
    return { result, error, written, refused };
  }
}

/**
 * The lifecycle every VM test file shares, called inside its describe: the domain is defined once, removed
 * afterwards whatever happens, and on CI without libvirt every test fails (a failing beforeAll would only mark
 * them skipped).
 */
export function useTestGuest(guest: TestGuest): void {
  beforeAll(() => {
    if (libvirtStatus().available) guest.create();
  });
  beforeEach(() => {
    const status = libvirtStatus();
    if (!status.available) throw new Error(`CI is set and the VM tests cannot run: ${status.reason}`);
  });
  afterAll(() => guest.destroy());
}
