import { spawn, spawnSync } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hasQemuImg, requireQemuImg } from '../../../../fixtures/corpus.js';

requireQemuImg();

/**
 * Commit and safe rebase killed with SIGKILL in the middle: at chosen writes (the runner kills itself just
 * before its Nth write, for N spread over the whole operation) and at random moments (the test kills it after a
 * random delay). After each kill: qemu-img check finds no corruption in any image (leaked clusters are allowed),
 * the top image shows exactly what it showed before, and for commit every sector of the base shows either its
 * old contents or the committed ones. Running the operation again then completes it.
 */
const runner = fileURLToPath(new URL('../test-support/chain-op-runner.ts', import.meta.url));
const MiB = 1024 * 1024;

interface RunResult {
  killed: boolean;
  writes?: number;
}

function runOp(args: string[], killAfterMs?: number): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', runner, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.stdout.on('data', (chunk: Buffer) => {
      stdout += chunk.toString();
      if (killAfterMs !== undefined && chunk.toString().includes('ready')) setTimeout(() => child.kill('SIGKILL'), killAfterMs);
    });
    child.on('exit', (code, signal) => {
      if (signal === 'SIGKILL') resolve({ killed: true });
      else if (code === 0) resolve({ killed: false, writes: Number(/done (\d+)/.exec(stdout)?.[1]) });
      else reject(new Error(`runner failed (code ${code}): ${stderr}`));
    });
  });
}

function qemu(args: string[], cwd: string): string {
  const r = spawnSync('qemu-img', args, { cwd, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`qemu-img ${args.join(' ')}: ${r.stdout}${r.stderr}`);
  return r.stdout;
}

function qemuIo(file: string, commands: string[], cwd: string): void {
  const r = spawnSync('qemu-io', ['-f', 'qcow2', ...commands.flatMap((c) => ['-c', c]), file], { cwd, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`qemu-io ${file}: ${r.stderr}`);
}

/** qemu-img check: no corruption (exit 0, or 3 for leaks only). */
function expectNoCorruption(file: string, cwd: string, context: string): void {
  const r = spawnSync('qemu-img', ['check', '--output=json', file], { cwd, encoding: 'utf8' });
  const json = JSON.parse(r.stdout) as { corruptions?: number; 'check-errors'?: number };
  expect(json.corruptions ?? 0, `${context}: ${file} has corruptions`).toBe(0);
  expect(json['check-errors'] ?? 0, `${context}: ${file} check errors`).toBe(0);
  expect([0, 3], `${context}: qemu-img check ${file} exit ${r.status}`).toContain(r.status);
}

function rawView(file: string, cwd: string, out: string): Buffer {
  qemu(['convert', '-O', 'raw', file, out], cwd);
  return readFileSync(join(cwd, out));
}

/** Every 512-byte sector of `actual` equals the same sector of `old` or of `next`. */
function sectorsOldOrNew(actual: Buffer, old: Buffer, next: Buffer): number {
  for (let at = 0; at < actual.length; at += 512) {
    const sector = actual.subarray(at, at + 512);
    if (!sector.equals(old.subarray(at, at + 512)) && !sector.equals(next.subarray(at, at + 512))) return at;
  }
  return -1;
}

describe.runIf(hasQemuImg())('commit and rebase killed at random moments leave consistent images', { timeout: 600_000 }, () => {
  const work = mkdtempSync(join(tmpdir(), 'qcowkit-chain-crash-'));
  const pristine = join(work, 'pristine');
  let topView: Buffer;
  let midView: Buffer;
  afterAll(() => rmSync(work, { recursive: true, force: true }));

  beforeAll(() => {
    // base.qcow2 <- mid.qcow2 (4 KiB clusters) <- top.qcow2 (64 KiB clusters), 48 MiB, relative names.
    mkdirSync(pristine);
    qemu(['create', '-q', '-f', 'qcow2', 'base.qcow2', '48M'], pristine);
    qemuIo('base.qcow2', ['write -P 0x11 0 40M'], pristine);
    qemu(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', '-b', 'base.qcow2', '-F', 'qcow2', 'mid.qcow2'], pristine);
    qemuIo('mid.qcow2', ['write -P 0x22 1M 6M', 'write -z 9M 2M', 'write -P 0x23 20M 5000', 'write -P 0x24 30M 3M'], pristine);
    qemu(['create', '-q', '-f', 'qcow2', '-b', 'mid.qcow2', '-F', 'qcow2', 'top.qcow2'], pristine);
    const writes: string[] = [];
    for (let i = 0; i < 40; i++) writes.push(`write -P ${0x40 + i} ${i * 1100 + 7}k ${96 + (i % 5) * 100}k`);
    writes.push('write -z 12M 3M', 'write -z 31M 64k', 'write -P 0x7f 44M 4M');
    qemuIo('top.qcow2', writes, pristine);
    topView = rawView('top.qcow2', pristine, 'top.view');
    midView = rawView('mid.qcow2', pristine, 'mid.view');
  });

  function freshCopy(name: string): string {
    const dir = join(work, name);
    cpSync(pristine, dir, { recursive: true });
    return dir;
  }

  /** Kill points: N spread over the whole operation (first and last writes included), then a few random times. */
  async function killPoints(args: (dir: string) => string[], rounds: number): Promise<{ writes: number; points: number[] }> {
    const dry = freshCopy('dry');
    const result = await runOp(args(dry));
    rmSync(dry, { recursive: true, force: true });
    const writes = result.writes!;
    expect(writes).toBeGreaterThan(10);
    const points = [1, 2, writes - 1, writes];
    let seed = 12345;
    while (points.length < rounds) {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      points.push(1 + (seed % writes));
    }
    return { writes, points };
  }

  it('commit', async () => {
    const args = (dir: string, killAt = 0): string[] => ['commit', join(dir, 'top.qcow2'), '-', String(killAt)];
    const { points } = await killPoints((dir) => args(dir), 10);
    const check = (dir: string, context: string): void => {
      for (const file of ['top.qcow2', 'mid.qcow2', 'base.qcow2']) expectNoCorruption(file, dir, context);
      expect(rawView('top.qcow2', dir, 'top.after').equals(topView), `${context}: the top image's view changed`).toBe(true);
      const bad = sectorsOldOrNew(rawView('mid.qcow2', dir, 'mid.after'), midView, topView);
      expect(bad, `${context}: mid sector at ${bad} is neither old nor committed`).toBe(-1);
    };
    const delays = [150, 400, 900];
    for (const [i, killAt] of [...points.map((p) => ['write', p] as const), ...delays.map((d) => ['time', d] as const)].entries()) {
      const dir = freshCopy(`commit-${i}`);
      const context = `commit killed at ${killAt[0]} ${killAt[1]}`;
      const result = killAt[0] === 'write' ? await runOp(args(dir, killAt[1])) : await runOp(args(dir), killAt[1]);
      if (killAt[0] === 'write') expect(result.killed, context).toBe(true);
      check(dir, context);
      // Running it again finishes the job: the mid image holds what the top showed, the top reads through.
      if (result.killed) await runOp(args(dir));
      for (const file of ['top.qcow2', 'mid.qcow2']) expectNoCorruption(file, dir, `${context}, then again`);
      expect(rawView('mid.qcow2', dir, 'mid.final').equals(topView), `${context}, then again: mid`).toBe(true);
      expect(rawView('top.qcow2', dir, 'top.final').equals(topView), `${context}, then again: top`).toBe(true);
      rmSync(dir, { recursive: true, force: true });
    }
  });

  for (const target of [{ backing: 'base.qcow2', format: 'qcow2' }, { backing: '', format: '' }]) {
    it(`safe rebase onto ${target.backing === '' ? 'nothing (-b "")' : target.backing}`, async () => {
      const args = (dir: string, killAt = 0): string[] => ['rebase', join(dir, 'top.qcow2'), target.backing, target.format, String(killAt)];
      const { points } = await killPoints((dir) => args(dir), 10);
      const delays = [150, 500];
      for (const [i, killAt] of [...points.map((p) => ['write', p] as const), ...delays.map((d) => ['time', d] as const)].entries()) {
        const dir = freshCopy(`rebase-${target.backing || 'none'}-${i}`);
        const context = `rebase killed at ${killAt[0]} ${killAt[1]}`;
        const result = killAt[0] === 'write' ? await runOp(args(dir, killAt[1])) : await runOp(args(dir), killAt[1]);
        if (killAt[0] === 'write') expect(result.killed, context).toBe(true);
        expectNoCorruption('top.qcow2', dir, context);
        // Whichever reference the header holds now, the guest sees the same disk.
        expect(rawView('top.qcow2', dir, 'top.after').equals(topView), `${context}: the top image's view changed`).toBe(true);
        if (result.killed) await runOp(args(dir));
        expectNoCorruption('top.qcow2', dir, `${context}, then again`);
        expect(rawView('top.qcow2', dir, 'top.final').equals(topView), `${context}, then again`).toBe(true);
        const info = JSON.parse(qemu(['info', '--output=json', 'top.qcow2'], dir)) as Record<string, unknown>;
        expect(info['backing-filename']).toBe(target.backing === '' ? undefined : target.backing);
        rmSync(dir, { recursive: true, force: true });
      }
    });
  }
});
