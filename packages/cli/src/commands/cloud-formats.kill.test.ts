/**
 * `qcowkit convert -O vpc|vmdk|vhdx` killed with SIGKILL at moments spread over the whole run (and a random
 * jitter, printed with the moment for replay). What a user may find afterwards: either a file that is not an
 * image of that format at all (qemu-img refuses it for the format and probes it as raw: nothing claims to be the
 * converted disk), or the finished image (equal to the source, clean where qemu-img checks). Never an image of
 * the format that qemu-img opens with part of the disk missing, or calls corrupt. The engine-level test
 * (packages/qcow2/src/formats/crash-prefix.test.ts) covers every write prefix; this one covers the real process.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hasQemuImg, hasQemuIo, qemuImg, qemuIo, requireQemuImg } from '../../../../fixtures/corpus.js';
import { CLI_MAIN } from '../test-support/run-cli.js';

requireQemuImg();

const CASES: Array<{ format: 'vpc' | 'vmdk' | 'vhdx'; options: string[]; notThisFormat: RegExp; checks: boolean }> = [
  { format: 'vpc', options: [], notThisFormat: /invalid VPC image|File too small for a VHD header/, checks: false },
  { format: 'vpc', options: ['-o', 'subformat=fixed'], notThisFormat: /invalid VPC image|File too small for a VHD header/, checks: false },
  { format: 'vmdk', options: [], notThisFormat: /invalid VMDK image descriptor|File is too small, not a valid image/, checks: true },
  { format: 'vmdk', options: ['-o', 'subformat=streamOptimized'], notThisFormat: /invalid VMDK image descriptor|File is too small, not a valid image/, checks: true },
  { format: 'vhdx', options: [], notThisFormat: /Invalid argument/, checks: true },
  { format: 'vhdx', options: ['-o', 'subformat=fixed'], notThisFormat: /Invalid argument/, checks: true },
];
const KILLS = 6;

function convert(args: string[], cwd: string, killAfterMs?: number): Promise<{ killed: boolean; ms: number }> {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const child = spawn(process.execPath, [CLI_MAIN, 'convert', ...args], { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const timer = killAfterMs === undefined ? undefined : setTimeout(() => child.kill('SIGKILL'), killAfterMs);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      if (signal === 'SIGKILL') resolve({ killed: true, ms: Date.now() - started });
      else if (code === 0) resolve({ killed: false, ms: Date.now() - started });
      else reject(new Error(`convert failed (${code}): ${stderr}`));
    });
  });
}

describe.runIf(hasQemuImg() && hasQemuIo())('convert to the cloud formats, killed with SIGKILL', { timeout: 600_000 }, () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'qcowkit-formats-kill-'));
    // 1 GiB with 240 MiB of data in 96 runs, so a kill has a good chance to land while data is being written.
    expect(qemuImg(['create', '-q', '-f', 'raw', 'source.raw', '1G'], { cwd: dir }).status).toBe(0);
    const writes: string[] = [];
    for (let i = 0; i < 96; i++) writes.push('-c', `write -P ${(i % 250) + 1} ${i * 10 * 1024 * 1024 + i * 4096} ${2 * 1024 * 1024 + i * 1024}`);
    expect(qemuIo(['-f', 'raw', ...writes, 'source.raw'], { cwd: dir }).status).toBe(0);
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  for (const c of CASES) {
    it(`-O ${c.format} ${c.options.join(' ')}`, async () => {
      const args = ['-f', 'raw', '-O', c.format, ...c.options, 'source.raw'];
      const full = await convert([...args, 'whole'], dir);
      expect(full.killed).toBe(false);
      let refused = 0;
      // Runs take from half to twice as long on this shared machine: a run that ended before its kill shrinks
      // the span the kills spread over, and the moment is tried again (up to 3 times as many runs as kills).
      let span = full.ms;
      for (let i = 0, runs = 0; i < KILLS && runs < 3 * KILLS; runs++) {
        const at = Math.round((span * (i + 0.5)) / KILLS + (Math.random() - 0.5) * (span / KILLS));
        rmSync(join(dir, 'killed'), { force: true });
        const run = await convert([...args, 'killed'], dir, Math.max(1, at));
        const where = `killed after ${at} ms of a ${span} ms run`;
        if (run.killed) i++;
        else span = Math.min(span, run.ms) * 0.8;
        if (!existsSync(join(dir, 'killed'))) continue; // killed before it made the file
        const info = qemuImg(['info', '-f', c.format, '--output=json', 'killed'], { cwd: dir });
        if (info.status !== 0) {
          expect(run.killed, where).toBe(true);
          expect(info.stderr, `${where}: ${info.stderr}`).toMatch(c.notThisFormat);
          expect(JSON.parse(qemuImg(['info', '--output=json', 'killed'], { cwd: dir }).stdout).format, where).toBe('raw');
          refused++;
          continue;
        }
        const compare = qemuImg(['compare', '-f', c.format, '-F', 'raw', 'killed', 'source.raw'], { cwd: dir });
        expect(`${compare.stdout}${compare.stderr}`, where).toMatch(/Images are identical/);
        if (c.checks) expect(qemuImg(['check', '-f', c.format, 'killed'], { cwd: dir }).status, where).toBe(0);
      }
      // The kills did land inside the run.
      expect(refused).toBeGreaterThan(0);
    });
  }
});
