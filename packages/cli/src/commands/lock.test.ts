/**
 * The CLI beside a running qemu, against the real thing: qemu-io holding an image as a guest does (read-write,
 * or -r), every command run by qemu-img (qemu-io for `io`) and by qcowkit on fresh copies of the same images.
 * qcowkit must end as qemu-img ends (exit status, and qemu-img's lock message in its one-line error), and a
 * refused command must leave every file byte-identical. Set QCOWKIT_LOCK_TABLE=FILE to get the table.
 */
import { execFile, spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, constants, cpSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hasQemuImg, hasQemuIo, isCI, qemuImg, qemuImgBinary, qemuIo, qemuIoBinary } from '../../../../fixtures/corpus.js';
import { heldLockBytes, QemuIoHolder } from '../../../qcow2/src/test-support/qemu-io-holder.js';
import { CLI_MAIN, runCli, type Run } from '../test-support/run-cli.js';

const enabled = hasQemuImg() && hasQemuIo();
if (!enabled && isCI()) throw new Error('the lock tests need qemu-img and qemu-io on CI');

let root: string;
let template: string;
beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), 'qcowkit-lock-cli-'));
  if (enabled) template = makeTemplate(join(root, 'template'));
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

type Holder = 'rw' | 'ro' | 'none';
const HOLDER_ARGS: Record<Exclude<Holder, 'none'>, string[]> = { rw: [], ro: ['-r'] };

/** The images every case starts from: base <- top (with a snapshot s0), other, and a raw disk.raw. */
function makeTemplate(dir: string): string {
  mkdirSync(dir);
  const at = (file: string): string => join(dir, file);
  qemuImg(['create', '-q', '-f', 'qcow2', at('base.qcow2'), '4M']);
  qemuIo(['-c', 'write -P 0x11 0 1M', at('base.qcow2')]);
  qemuImg(['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', at('top.qcow2')], { cwd: dir });
  qemuIo(['-c', 'write -P 0x22 512k 1M', at('top.qcow2')]);
  qemuImg(['snapshot', '-c', 's0', at('top.qcow2')]);
  qemuIo(['-c', 'write -P 0x23 2M 64k', at('top.qcow2')]);
  qemuImg(['create', '-q', '-f', 'qcow2', at('other.qcow2'), '4M']);
  qemuIo(['-c', 'write -P 0x33 0 64k', at('other.qcow2')]);
  writeFileSync(at('disk.raw'), Buffer.alloc(1 << 20, 0x55));
  return dir;
}

/** Fresh copies of the template images in a directory of their own. */
function freshImages(name: string): string {
  const dir = join(root, name);
  rmSync(dir, { recursive: true, force: true });
  cpSync(template, dir, { recursive: true });
  return dir;
}

/** Opens the FIFO for writing once a reader waits on it, and closes it: the reader sees end of file. */
async function releaseFifo(fifo: string): Promise<void> {
  for (let i = 0; i < 600; i++) {
    try {
      closeSync(openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK));
      return;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENXIO') throw error;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
  throw new Error(`nobody opened ${fifo} for reading`);
}

function hashes(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const file of readdirSync(dir).sort()) out[file] = createHash('sha256').update(readFileSync(join(dir, file))).digest('hex');
  return out;
}

interface Case {
  name: string;
  args: string[];
  /** The file the guest (qemu-io) holds. */
  held?: string;
  writes: boolean;
  /** A raw image (held by qemu-io -f raw): qemu shares writing a raw file with other writers. */
  raw?: boolean;
}

// qemu-img's arguments; `io` is run as qemu-io by the referee.
const CASES: Case[] = [
  { name: 'io write', args: ['io', '-c', 'write 0 4k', 'top.qcow2'], writes: true },
  { name: 'snapshot -c', args: ['snapshot', '-c', 's1', 'top.qcow2'], writes: true },
  { name: 'snapshot -a', args: ['snapshot', '-a', 's0', 'top.qcow2'], writes: true },
  { name: 'snapshot -d', args: ['snapshot', '-d', 's0', 'top.qcow2'], writes: true },
  { name: 'resize', args: ['resize', 'top.qcow2', '8M'], writes: true },
  { name: 'commit (top held)', args: ['commit', 'top.qcow2'], writes: true },
  { name: 'commit (base held)', args: ['commit', 'top.qcow2'], held: 'base.qcow2', writes: true },
  { name: 'rebase', args: ['rebase', '-b', 'other.qcow2', '-F', 'qcow2', 'top.qcow2'], writes: true },
  { name: 'rebase -u', args: ['rebase', '-u', '-b', 'other.qcow2', '-F', 'qcow2', 'top.qcow2'], writes: true },
  { name: 'check -r all', args: ['check', '-r', 'all', 'top.qcow2'], writes: true },
  { name: 'convert -n into it', args: ['convert', '-n', '-O', 'qcow2', 'other.qcow2', 'top.qcow2'], writes: true },
  { name: 'convert over it', args: ['convert', '-O', 'qcow2', 'other.qcow2', 'top.qcow2'], writes: true },
  { name: 'create over it', args: ['create', '-f', 'qcow2', 'top.qcow2', '4M'], writes: true },
  { name: 'amend', args: ['amend', '-o', 'lazy_refcounts=on', 'top.qcow2'], writes: true },
  { name: 'bitmap --add', args: ['bitmap', '--add', 'top.qcow2', 'b0'], writes: true },
  { name: 'dd into it', args: ['dd', '-O', 'qcow2', 'if=other.qcow2', 'of=top.qcow2'], writes: true },
  { name: 'info', args: ['info', 'top.qcow2'], writes: false },
  { name: 'info -U', args: ['info', '-U', 'top.qcow2'], writes: false },
  { name: 'info --backing-chain', args: ['info', '--backing-chain', 'top.qcow2'], writes: false },
  { name: 'map', args: ['map', '--output=json', 'top.qcow2'], writes: false },
  { name: 'map -U', args: ['map', '-U', '--output=json', 'top.qcow2'], writes: false },
  { name: 'check', args: ['check', 'top.qcow2'], writes: false },
  { name: 'check -U', args: ['check', '-U', 'top.qcow2'], writes: false },
  { name: 'convert', args: ['convert', '-O', 'raw', 'top.qcow2', 'out.raw'], writes: false },
  { name: 'convert -U', args: ['convert', '-U', '-O', 'raw', 'top.qcow2', 'out.raw'], writes: false },
  { name: 'compare', args: ['compare', 'top.qcow2', 'other.qcow2'], writes: false },
  { name: 'compare -U', args: ['compare', '-U', 'top.qcow2', 'other.qcow2'], writes: false },
  { name: 'snapshot -l', args: ['snapshot', '-l', 'top.qcow2'], writes: false },
  { name: 'snapshot -l -U', args: ['snapshot', '-l', '-U', 'top.qcow2'], writes: false },
  { name: 'measure', args: ['measure', '-O', 'qcow2', 'top.qcow2'], writes: false },
  { name: 'measure -U', args: ['measure', '-U', '-O', 'qcow2', 'top.qcow2'], writes: false },
  { name: 'dd from it', args: ['dd', 'if=top.qcow2', 'of=out.raw'], writes: false },
  { name: 'dd -U from it', args: ['dd', '-U', 'if=top.qcow2', 'of=out.raw'], writes: false },
  { name: 'io read -U', args: ['io', '-r', '-U', '-c', 'read 0 4k', 'top.qcow2'], writes: false },
  { name: 'raw: io write', args: ['io', '-f', 'raw', '-c', 'write 0 4k', 'disk.raw'], held: 'disk.raw', raw: true, writes: true },
  { name: 'raw: resize', args: ['resize', '-f', 'raw', 'disk.raw', '2M'], held: 'disk.raw', raw: true, writes: true },
  { name: 'raw: convert -n into it', args: ['convert', '-n', '-O', 'raw', 'other.qcow2', 'disk.raw'], held: 'disk.raw', raw: true, writes: true },
  { name: 'raw: info', args: ['info', '-f', 'raw', 'disk.raw'], held: 'disk.raw', raw: true, writes: false },
  { name: 'raw: map', args: ['map', '-f', 'raw', '--output=json', 'disk.raw'], held: 'disk.raw', raw: true, writes: false },
  { name: 'raw: convert from it', args: ['convert', '-f', 'raw', '-O', 'raw', 'disk.raw', 'out.raw'], held: 'disk.raw', raw: true, writes: false },
  { name: 'raw: convert -U from it', args: ['convert', '-U', '-f', 'raw', '-O', 'raw', 'disk.raw', 'out.raw'], held: 'disk.raw', raw: true, writes: false },
];

/** The lock message of a run: `Failed to get ... lock` and the image named in the question after it. */
function lockMessage(run: Run): string | undefined {
  const match = /(Failed to get (?:shared )?"[a-z ]+" lock)[.\s]*Is another process using the image \[([^\]]+)\]\?/.exec(run.stderr);
  return match === null ? undefined : `${match[1]} [${match[2]!.split('/').pop()}]`;
}

/** The installed command, as users run it (the bundle with its code cache: quicker to start than dist/main.js). */
const CLI_LAUNCHER = join(CLI_MAIN, '../../bin/qcowkit.js');

/** Runs a command without blocking, so the cases of one table row run side by side. */
function runAsync(command: string, args: string[], cwd: string): Promise<Run> {
  return new Promise((resolve, reject) => {
    execFile(command, args, { cwd, encoding: 'utf8', timeout: 120_000, maxBuffer: 64 << 20 }, (error, stdout, stderr) => {
      const status = error === null ? 0 : typeof error.code === 'number' ? error.code : undefined;
      if (status === undefined) reject(error);
      else resolve({ stdout, stderr, status });
    });
  });
}

async function runBeside(kase: Case, holder: Holder, tool: 'qemu' | 'qcowkit'): Promise<{ run: Run; changed: string[] }> {
  const dir = freshImages(`${kase.name.replace(/\W+/g, '-')}-${holder}-${tool}`);
  const holderArgs = holder === 'none' ? [] : [...HOLDER_ARGS[holder], ...(kase.raw ? ['-f', 'raw'] : [])];
  const guest = holder === 'none' ? undefined : await QemuIoHolder.start(join(dir, kase.held ?? 'top.qcow2'), holderArgs);
  try {
    const before = hashes(dir);
    const run =
      tool === 'qcowkit'
        ? await runAsync(process.execPath, [CLI_LAUNCHER, ...kase.args], dir)
        : await runAsync(kase.args[0] === 'io' ? qemuIoBinary() : qemuImgBinary(), kase.args[0] === 'io' ? kase.args.slice(1) : kase.args, dir);
    const after = hashes(dir);
    const changed = Object.keys({ ...before, ...after }).filter((f) => before[f] !== after[f] && f !== 'out.raw');
    return { run, changed };
  } finally {
    await guest?.release();
  }
}

const table: string[] = [];

describe.runIf(enabled)('beside a running qemu (qemu-io holding the image)', () => {
  afterAll(() => {
    const file = process.env.QCOWKIT_LOCK_TABLE;
    if (file !== undefined && table.length > 0) {
      writeFileSync(file, `| command | qemu-io holding rw | qemu-io -r holding | nothing holding |\n|---|---|---|---|\n${table.join('\n')}\n`);
    }
  });

  it.each(CASES)('$name ends as qemu-img does', async (kase) => {
    const cells: string[] = [];
    const holders = ['rw', 'ro', 'none'] as const;
    const runs = await Promise.all(holders.map((holder) => Promise.all([runBeside(kase, holder, 'qemu'), runBeside(kase, holder, 'qcowkit')])));
    for (const [i, holder] of holders.entries()) {
      const [qemu, ours] = runs[i]!;
      const context = `${kase.name} beside ${holder}: qemu-img ${qemu.run.status} ${qemu.run.stderr.trim()} / qcowkit ${ours.run.status} ${ours.run.stderr.trim()}`;
      expect(ours.run.status, context).toBe(qemu.run.status);
      expect(lockMessage(ours.run), context).toBe(lockMessage(qemu.run));
      if (lockMessage(qemu.run) !== undefined) {
        // Refused: nothing changed, and the error is one line in qcowkit's style with qemu-img's words.
        expect(ours.changed, context).toEqual([]);
        expect(qemu.changed, context).toEqual([]);
        expect(ours.run.stderr.trim().split('\n'), context).toHaveLength(1);
        expect(ours.run.stderr, context).toMatch(/^qcowkit: /);
      }
      if (holder !== 'none' && kase.writes && !kase.raw) expect(lockMessage(qemu.run), `${context}: a writer must be refused`).toMatch(/write/);
      const show = (r: { run: Run }) => (lockMessage(r.run) === undefined ? `exit ${r.run.status}` : `exit ${r.run.status}, ${lockMessage(r.run)!.replace(/ \[.*/, '')}`);
      cells.push(`${show(ours)} (qemu-img: ${show(qemu)})`);
    }
    table.push(`| \`${kase.args.join(' ')}\`${kase.held !== undefined && !kase.raw ? ` (${kase.held} held)` : ''} | ${cells.join(' | ')} |`);
  });

  it('refuses -U where qemu-img does: with an open for writing', () => {
    const dir = freshImages('force-share-writable');
    for (const args of [['check', '-U', '-r', 'all', 'top.qcow2'], ['snapshot', '-U', '-c', 'x', 'top.qcow2']]) {
      const qemu = qemuImg(args, { cwd: dir });
      const ours = runCli(args, { cwd: dir });
      expect(qemu.stderr).toContain('force-share=on can only be used with read-only images');
      expect(ours.stderr).toContain('force-share=on can only be used with read-only images');
      expect(ours.status).toBe(qemu.status);
    }
    const io = runCli(['io', '-U', '-c', 'write 0 4k', 'top.qcow2'], { cwd: dir });
    expect(io.status).toBe(qemuIo(['-U', '-c', 'write 0 4k', 'top.qcow2'], { cwd: dir }).status);
    expect(io.stderr).toContain('force-share=on can only be used with read-only images');
  });

  it('holds an image while a command runs: qemu cannot write it meanwhile, and the locks go with the process', async () => {
    // `io` opens top.qcow2 for writing (locked at once), then its backing file, a FIFO: the open of the FIFO
    // waits for a writer, so the command stops right there with the image held.
    const dir = freshImages('held-by-cli');
    const fifo = join(dir, 'backing.fifo');
    expect(spawnSync('mkfifo', [fifo]).status).toBe(0);
    qemuImg(['rebase', '-u', '-b', 'backing.fifo', '-F', 'raw', 'top.qcow2'], { cwd: dir });
    const child = spawn(process.execPath, [CLI_MAIN, 'io', '-c', 'write -P 0x44 0 4k', 'top.qcow2'], { cwd: dir, stdio: 'pipe' });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const exited = new Promise<number>((resolve) => child.on('close', (code) => resolve(code ?? -1)));
    const top = join(dir, 'top.qcow2');
    for (let i = 0; i < 600 && heldLockBytes(top).length === 0; i++) await new Promise((r) => setTimeout(r, 50));
    expect(heldLockBytes(top)).toEqual([100, 101, 103, 201, 203]);

    const write = qemuIo(['-c', 'write 0 4k', 'top.qcow2'], { cwd: dir });
    expect(write.status).toBe(1);
    expect(write.stderr).toContain('Failed to get "write" lock');
    const info = qemuImg(['info', 'top.qcow2'], { cwd: dir });
    expect(info.status).toBe(1);
    expect(info.stderr).toContain('Failed to get shared "write" lock');
    expect(qemuImg(['info', '-U', 'top.qcow2'], { cwd: dir }).status).toBe(0);

    await releaseFifo(fifo); // a writer comes and goes: the FIFO reads as an empty raw backing file
    expect(await exited, stderr).toBe(0);
    expect(heldLockBytes(top)).toEqual([]);
    // The write went in (read back by qemu-io, once the FIFO no longer backs the image).
    expect(qemuImg(['rebase', '-u', '-b', '', 'top.qcow2'], { cwd: dir }).status).toBe(0);
    expect(qemuIo(['-c', 'read -P 0x44 0 4k', 'top.qcow2'], { cwd: dir }).status).toBe(0);
  });

  it('without the native helper, commands work with one warning line, and lock nothing', async () => {
    const dir = freshImages('pure-path');
    const guest = await QemuIoHolder.start(join(dir, 'other.qcow2'), ['-r']);
    try {
      const env = { ...process.env, QCOWKIT_NATIVE: 'off' };
      const write = runCli(['io', '-c', 'write 0 4k', 'top.qcow2'], { cwd: dir, env });
      expect(write.status).toBe(0);
      expect(write.stderr).toBe('qcowkit: warning: image locking is off (the native helper is not loaded: QCOWKIT_NATIVE=off); qemu is not kept from using the same images\n');
      const compare = runCli(['compare', 'top.qcow2', 'other.qcow2'], { cwd: dir, env });
      expect(compare.status).toBe(1);
      expect(compare.stderr.split('\n').filter((l) => l !== '')).toHaveLength(1);
      expect(runCli(['check', 'other.qcow2'], { cwd: dir, env }).status).toBe(0);
      // The same write with the helper is refused beside a writer: the switch, not the images, made the difference.
      expect(runCli(['snapshot', '-c', 'x', 'other.qcow2'], { cwd: dir }).stderr).toContain('Failed to get "write" lock');
    } finally {
      await guest.release();
    }
  });

  it.runIf(existsSync(join(CLI_MAIN, '../../../qcow2/native/prebuilt/linux-x64/qcowkit_native.node')) && process.arch === 'x64')(
    'refuses with the prebuilt copy of the helper too',
    async () => {
      const dir = freshImages('prebuilt');
      const guest = await QemuIoHolder.start(join(dir, 'top.qcow2'));
      try {
        const run = runCli(['io', '-c', 'write 0 4k', 'top.qcow2'], { cwd: dir, env: { ...process.env, QCOWKIT_NATIVE: 'prebuilt' } });
        expect(run.status).toBe(1);
        expect(run.stderr).toBe('qcowkit: top.qcow2: Failed to get "write" lock. Is another process using the image [top.qcow2]?\n');
      } finally {
        await guest.release();
      }
    },
  );
});
