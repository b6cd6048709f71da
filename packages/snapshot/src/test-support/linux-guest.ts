/**
 * A real Linux guest for the VM tests: the Debian guest scripts/build-test-guest.sh builds (cached under
 * build/vm-guest/), booted by libvirt with direct kernel boot — systemd, qemu-guest-agent with its fsfreeze hook,
 * and vm-writer.service appending a numbered, fsync'ed line to /var/lib/vm-writer/log (vda) and then to /data/log
 * (vdb) five times a second. Its two disks are qcow2 overlays over the cached ext4 images, made fresh per guest.
 * Small (1 vCPU, 256 MiB): under TCG it costs a CPU while it boots, so the tests boot it once and share it.
 *
 * Host-side checks read the guest's files out of an image without mounting it: qemu-img convert to raw, e2fsck,
 * debugfs.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pidExists } from '../intent/owner.js';
import { escapeXml } from '../xml/xml-reader.js';
import { qemuImg } from './images.js';
import { libvirtStatus, URI, virsh } from './libvirt-guest.js';

const REPO = fileURLToPath(new URL('../../../../', import.meta.url));

export interface GuestImage {
  dir: string;
  kernel: string;
  initrd: string;
  root: string;
  data: string;
  /** How long the build took (0 when it came from the cache). */
  buildSeconds: number;
}

/** The guest image, built by scripts/build-test-guest.sh unless cached (minutes on a clean clone). */
export function guestImage(): GuestImage {
  const started = Date.now();
  const r = spawnSync('bash', [join(REPO, 'scripts', 'build-test-guest.sh')], { encoding: 'utf8', timeout: 20 * 60_000 });
  if (r.error) throw r.error;
  if (r.status !== 0) throw new Error(`scripts/build-test-guest.sh failed (${r.status ?? r.signal}): ${r.stderr.trim().split('\n').slice(-15).join('\n')}`);
  const dir = r.stdout.trim().split('\n').pop()!;
  const info = JSON.parse(readFileSync(join(dir, 'guest.json'), 'utf8')) as { totalSeconds: number };
  const built = /built in/.test(r.stderr);
  return {
    dir,
    kernel: join(dir, 'vmlinuz'),
    initrd: join(dir, 'initrd.img'),
    root: join(dir, 'root.raw'),
    data: join(dir, 'data.raw'),
    buildSeconds: built ? Math.max(info.totalSeconds, Math.round((Date.now() - started) / 1000)) : 0,
  };
}

function virshQuiet(...args: string[]): { status: number | null; stdout: string } {
  const r = spawnSync('virsh', ['-c', URI, ...args], { encoding: 'utf8' });
  return { status: r.status, stdout: r.stdout ?? '' };
}

/**
 * Whether KVM boots this kernel here: a transient domain with the kernel alone and no root file system panics
 * at once and, with panic=-1 and on_reboot destroy, disappears — within a second or two under a working KVM.
 * On some nested KVM setups this kernel hangs in its real-mode setup instead; then the guests run under TCG.
 * QCOWKIT_TEST_VIRT_TYPE=kvm|qemu skips the probe.
 */
export function guestVirtType(image: GuestImage): 'kvm' | 'qemu' {
  const forced = process.env.QCOWKIT_TEST_VIRT_TYPE;
  if (forced === 'kvm' || forced === 'qemu') return forced;
  if (libvirtStatus().virtType !== 'kvm') return 'qemu';
  const bootId = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  const cache = join(image.dir, `kvm-probe-${bootId}`);
  if (existsSync(cache)) return readFileSync(cache, 'utf8').trim() === 'kvm' ? 'kvm' : 'qemu';
  const name = `qcowkit-vm-kvm-probe-${process.pid}`;
  const dir = mkdtempSync(join(tmpdir(), 'qcowkit-vm-kvm-probe-'));
  const xml = join(dir, 'probe.xml');
  writeFileSync(
    xml,
    `<domain type='kvm'><name>${name}</name><memory unit='MiB'>128</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><kernel>${escapeXml(image.kernel)}</kernel>
    <cmdline>panic=-1 console=ttyS0 root=/dev/vm-probe-no-root</cmdline></os>
  <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>
  <devices><memballoon model='none'/></devices></domain>`,
  );
  let result: 'kvm' | 'qemu' = 'qemu';
  if (virshQuiet('create', `--file=${xml}`).status === 0) {
    const deadline = Date.now() + 20_000;
    while (Date.now() < deadline) {
      if (virshQuiet('domstate', `--domain=${name}`).status !== 0) {
        result = 'kvm';
        break;
      }
      spawnSync('sleep', ['0.5']);
    }
    virshQuiet('destroy', `--domain=${name}`);
  }
  rmSync(dir, { recursive: true, force: true });
  writeFileSync(cache, result);
  return result;
}

export interface GuestExec {
  exitCode: number;
  stdout: string;
  stderr: string;
}

/** The writer's files, as the guest names them: one per disk, written in this order. */
export const WRITER_LOGS = { vda: '/var/lib/vm-writer/log', vdb: '/data/log' } as const;
/** The same files inside each disk's own file system (vdb is mounted at /data). */
export const WRITER_LOGS_IN_IMAGE = { vda: '/var/lib/vm-writer/log', vdb: '/log' } as const;
/** The fsfreeze hook's marker: "freeze N" per freeze, synced before the agent freezes the file systems. */
export const HOOK_MARKER = '/var/lib/vm-hook/marker';

export class LinuxGuest {
  readonly dir: string;
  readonly vda: string;
  readonly vdb: string;
  readonly console: string;
  readonly stateHome: string;
  readonly stateDir: string;
  virtType: 'kvm' | 'qemu' = 'qemu';
  /** Seconds from start to an answering agent with the writer going, at the last boot. */
  bootSeconds = 0;

  constructor(
    readonly name: string,
    readonly image: GuestImage,
  ) {
    this.dir = join(tmpdir(), name);
    this.vda = join(this.dir, 'vda.qcow2');
    this.vdb = join(this.dir, 'vdb.qcow2');
    this.console = join(this.dir, 'console.log');
    this.stateHome = join(tmpdir(), `${name}-state`);
    this.stateDir = join(this.stateHome, 'qcowkit', 'vm');
  }

  /** Guests of test processes that no longer exist (killed runs): destroyed, with their files. */
  static removeStale(): void {
    for (const name of virshQuiet('list', '--all', '--name').stdout.split('\n').map((n) => n.trim())) {
      const match = /^qcowkit-vm-linux-(\d+)$/.exec(name);
      if (match !== null && !pidExists(Number(match[1]))) new LinuxGuest(name, { dir: '', kernel: '', initrd: '', root: '', data: '', buildSeconds: 0 }).destroy();
    }
  }

  domainXml(): string {
    const disk = (file: string, dev: string): string => `    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='${escapeXml(file)}'/>
      <target dev='${dev}' bus='virtio'/>
    </disk>`;
    return `<domain type='${this.virtType}'>
  <name>${escapeXml(this.name)}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>${escapeXml(this.image.kernel)}</kernel>
    <initrd>${escapeXml(this.image.initrd)}</initrd>
    <cmdline>root=/dev/vda rw console=ttyS0 quiet</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <devices>
${disk(this.vda, 'vda')}
${disk(this.vdb, 'vdb')}
    <channel type='unix'>
      <source mode='bind'/>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <serial type='file'><source path='${escapeXml(this.console)}'/><target port='0'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>
`;
  }

  /** Fresh disks over the cached images, and the domain defined (shut off). */
  create(): void {
    LinuxGuest.removeStale();
    this.destroy();
    mkdirSync(this.dir, { recursive: true });
    qemuImg('create', '-q', '-f', 'qcow2', '-b', this.image.root, '-F', 'raw', this.vda);
    qemuImg('create', '-q', '-f', 'qcow2', '-b', this.image.data, '-F', 'raw', this.vdb);
    this.virtType = guestVirtType(this.image);
    const xml = join(this.dir, 'domain.xml');
    writeFileSync(xml, this.domainXml());
    virsh('define', `--file=${xml}`);
    rmSync(xml);
  }

  /** Boots the guest and waits until the agent answers and the writer has written to both disks. */
  async boot(timeoutMs = 300_000): Promise<void> {
    const started = Date.now();
    virsh('start', `--domain=${this.name}`);
    for (;;) {
      if (Date.now() - started > timeoutMs) {
        const tail = existsSync(this.console) ? readFileSync(this.console, 'utf8').split('\n').slice(-20).join('\n') : '(no console output)';
        throw new Error(`guest ${this.name} (${this.virtType}) did not answer within ${timeoutMs / 1000} s; console:\n${tail}`);
      }
      await new Promise((resolve) => setTimeout(resolve, 1000));
      try {
        if (this.writerSeq('vda') > 0 && this.writerSeq('vdb') > 0) break;
      } catch {
        // not up yet
      }
    }
    this.bootSeconds = Math.round((Date.now() - started) / 1000);
  }

  destroy(): void {
    virshQuiet('destroy', `--domain=${this.name}`);
    virshQuiet('undefine', `--domain=${this.name}`, '--managed-save', '--snapshots-metadata', '--nvram');
    if (this.dir !== tmpdir() && this.name !== '') rmSync(this.dir, { recursive: true, force: true });
    rmSync(this.stateHome, { recursive: true, force: true });
  }

  /** The environment of a qcowkit process working on this guest: its intent logs go to stateDir. */
  env(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
    return { ...process.env, XDG_STATE_HOME: this.stateHome, ...extra };
  }

  state(): string {
    return virsh('domstate', `--domain=${this.name}`).trim();
  }

  /** A guest agent command (JSON), its answer's `return`. */
  agent(command: object): unknown {
    const out = virsh('qemu-agent-command', `--domain=${this.name}`, '--timeout=20', JSON.stringify(command));
    return (JSON.parse(out) as { return: unknown }).return;
  }

  /** Runs a program in the guest through the agent and waits for it. */
  async exec(path: string, args: string[] = []): Promise<GuestExec> {
    const { pid } = this.agent({ execute: 'guest-exec', arguments: { path, arg: args, 'capture-output': true } }) as { pid: number };
    for (let i = 0; i < 300; i++) {
      const status = this.agent({ execute: 'guest-exec-status', arguments: { pid } }) as { exited: boolean; exitcode?: number; 'out-data'?: string; 'err-data'?: string };
      if (status.exited) {
        const decode = (b64: string | undefined): string => Buffer.from(b64 ?? '', 'base64').toString('utf8');
        return { exitCode: status.exitcode ?? -1, stdout: decode(status['out-data']), stderr: decode(status['err-data']) };
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    throw new Error(`guest ${this.name}: ${path} did not end`);
  }

  /** The number of the last line the writer wrote to a disk's log, as the guest sees it now. */
  writerSeq(disk: 'vda' | 'vdb'): number {
    const handle = this.agent({ execute: 'guest-file-open', arguments: { path: WRITER_LOGS[disk], mode: 'r' } }) as number;
    try {
      // The last line is in the last 64 bytes or so; read the tail.
      this.agent({ execute: 'guest-file-seek', arguments: { handle, offset: -200, whence: 'end' } });
      const read = this.agent({ execute: 'guest-file-read', arguments: { handle, count: 4096 } }) as { 'buf-b64': string };
      const lines = Buffer.from(read['buf-b64'], 'base64').toString('utf8').trim().split('\n');
      return Number(lines[lines.length - 1]!.split(' ')[0]);
    } catch (error) {
      // A file shorter than 200 bytes: seek failed; read it whole.
      if (!/Invalid argument|seek/i.test(String(error))) throw error;
      this.agent({ execute: 'guest-file-seek', arguments: { handle, offset: 0, whence: 'set' } });
      const read = this.agent({ execute: 'guest-file-read', arguments: { handle, count: 4096 } }) as { 'buf-b64': string };
      const lines = Buffer.from(read['buf-b64'], 'base64').toString('utf8').trim().split('\n');
      return Number(lines[lines.length - 1]!.split(' ')[0]);
    } finally {
      this.agent({ execute: 'guest-file-close', arguments: { handle } });
    }
  }

  /** The images of a disk's chain in the running domain's XML (or in `xml`), top first. */
  liveChain(target: string, xml = virsh('dumpxml', `--domain=${this.name}`)): string[] {
    const disk = new RegExp(`<disk [^>]*>((?:(?!</disk>)[\\s\\S])*<target dev='${target}'[\\s\\S]*?)</disk>`).exec(xml)?.[1] ?? '';
    return [...disk.matchAll(/<source file='([^']*)'/g)].map((m) => m[1]!);
  }

  blockJob(target: string): string {
    return virsh('blockjob', `--domain=${this.name}`, `--path=${target}`, '--raw').trim();
  }

  files(): string[] {
    return readdirSync(this.dir)
      .filter((f) => f !== 'console.log')
      .sort();
  }
}

/** What a guest file system image holds, read on the host without mounting it. */
export interface Ext4View {
  /** e2fsck -fn on the image as it is: exit status 0. */
  cleanAsIs: boolean;
  fsckAsIs: string;
  /** e2fsck -fn after the journal was replayed (on a copy). */
  cleanAfterReplay: boolean;
  fsckAfterReplay: string;
  /** Each asked-for file's content after the replay (undefined when it does not exist). */
  files: Map<string, string | undefined>;
}

/**
 * Reads an ext4 image (any format qemu-img reads; -U, so beside a running guest): e2fsck as it is, then the
 * journal replayed on a copy (e2fsck -fy), e2fsck again, and the files through debugfs. Without `fsck`, only
 * the journal is replayed (e2fsck -E journal_only) before the files are read; the clean flags are then false.
 */
export function readExt4(image: string, format: 'qcow2' | 'raw', paths: readonly string[], options: { fsck?: boolean } = {}): Ext4View {
  const work = mkdtempSync(join(tmpdir(), 'qcowkit-vm-ext4-'));
  try {
    const raw = join(work, 'fs.raw');
    qemuImg('convert', '-U', '-f', format, '-O', 'raw', image, raw);
    const fsck = (...args: string[]): { clean: boolean; output: string } => {
      const r = spawnSync('e2fsck', [...args, raw], { encoding: 'utf8' });
      return { clean: r.status === 0, output: `${r.stdout}${r.stderr}`.trim() };
    };
    const full = options.fsck !== false;
    const asIs = full ? fsck('-fn') : { clean: false, output: '(not checked)' };
    fsck(...(full ? ['-fy'] : ['-E', 'journal_only', '-y']));
    const replayed = full ? fsck('-fn') : { clean: false, output: '(not checked)' };
    const files = new Map<string, string | undefined>();
    for (const path of paths) {
      const r = spawnSync('debugfs', ['-R', `cat ${path}`, raw], { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
      files.set(path, /File not found|not found by ext2_lookup/.test(r.stderr) ? undefined : r.stdout);
    }
    return { cleanAsIs: asIs.clean, fsckAsIs: asIs.output, cleanAfterReplay: replayed.clean, fsckAfterReplay: replayed.output, files };
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

/** The writer's line numbers in a log's text, checked to run 1, 2, 3… without a gap or a torn line. */
export function writerLines(text: string | undefined, what: string): number[] {
  if (text === undefined) throw new Error(`${what}: the writer's log is missing`);
  const lines = text.split('\n').filter((l) => l !== '');
  const numbers = lines.map((line, i) => {
    const match = /^(\d+) \d+$/.exec(line);
    if (match === null) throw new Error(`${what}: line ${i + 1} is torn or foreign: '${line}'`);
    return Number(match[1]);
  });
  numbers.forEach((n, i) => {
    if (n !== numbers[0]! + i) throw new Error(`${what}: line ${i + 1} is ${n}, after ${numbers[i - 1]}`);
  });
  return numbers;
}
