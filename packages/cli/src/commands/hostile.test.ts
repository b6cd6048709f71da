import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { runCli } from '../test-support/run-cli.js';

/**
 * Broken and hostile images through the command line: one line on stderr, `qcowkit: FILE: message`, a non-zero
 * exit, no stack trace, and quickly (qemu-img hangs on a backing loop; qcowkit must not).
 */
const work = mkdtempSync(join(tmpdir(), 'qcowkit-hostile-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

/** A valid empty 64 MiB image (64 KiB clusters), laid out by hand, to patch into hostile ones. */
function header(patch: (view: DataView) => void, backing?: string): Uint8Array {
  const cluster = 65536;
  const bytes = new Uint8Array(4 * cluster);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, 0x514649fb);
  view.setUint32(4, 3);
  view.setUint32(20, 16);
  view.setBigUint64(24, 64n << 20n);
  view.setUint32(36, 1);
  view.setBigUint64(40, 3n * 65536n);
  view.setBigUint64(48, 65536n);
  view.setUint32(56, 1);
  view.setUint32(96, 4);
  view.setUint32(100, 112);
  if (backing !== undefined) {
    const name = new TextEncoder().encode(backing);
    view.setBigUint64(8, 120n);
    view.setUint32(16, name.length);
    bytes.set(name, 120);
  }
  view.setBigUint64(cluster, 2n * 65536n);
  for (let c = 0; c < 4; c++) view.setUint16(2 * cluster + c * 2, 1);
  patch(view);
  return bytes;
}

const cases: Array<[string, Uint8Array]> = [
  ['garbage.qcow2', new Uint8Array(8192).fill(0x5a)],
  ['truncated.qcow2', header(() => {}).subarray(0, 100)],
  ['l1-huge.qcow2', header((v) => v.setUint32(36, 0x7fffffff))],
  ['snapshots-huge.qcow2', header((v) => {
    v.setUint32(60, 2 ** 28);
    v.setBigUint64(64, 65536n);
  })],
  ['unknown-feature.qcow2', header((v) => v.setBigUint64(72, 1n << 33n))],
];

describe('broken images give one typed line, fast', () => {
  for (const [name, bytes] of cases) {
    for (const command of [['info'], ['map', '--output=json'], ['convert', '-O', 'raw']]) {
      it(`${command[0]} ${name}`, () => {
        writeFileSync(join(work, name), bytes);
        const args = [...command, '-f', 'qcow2', name, ...(command[0] === 'convert' ? ['out.raw'] : [])];
        const r = runCli(args, { cwd: work, timeoutMs: 10_000 });
        expect(r.status).not.toBe(0);
        expect(r.stderr.trim().split('\n')).toHaveLength(1);
        expect(r.stderr).toMatch(new RegExp(`^qcowkit: ${name.replace('.', '\\.')}: `));
        expect(r.stderr).not.toMatch(/\n\s+at /);
        expect(r.stdout).toBe('');
        // A whole process, Node's start-up included: well under the time qemu-img spends on a loop (forever).
        expect(r.ms).toBeLessThan(5000);
      });
    }
  }

  it('two images naming each other as backing files', () => {
    writeFileSync(join(work, 'loop-a.qcow2'), header(() => {}, 'loop-b.qcow2'));
    writeFileSync(join(work, 'loop-b.qcow2'), header(() => {}, 'loop-a.qcow2'));
    const r = runCli(['convert', '-O', 'raw', 'loop-a.qcow2', 'out.raw'], { cwd: work, timeoutMs: 10_000 });
    expect(r.status).toBe(1);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toContain('backing chain loops');
  });

  it('a stack trace only with QCOWKIT_DEBUG=1', () => {
    writeFileSync(join(work, 'garbage2.qcow2'), new Uint8Array(8192).fill(1));
    const r = runCli(['map', '-f', 'qcow2', 'garbage2.qcow2'], { cwd: work, env: { ...process.env, QCOWKIT_DEBUG: '1' } });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/\n\s+at /);
  });

  it('--untrusted refuses a backing file reference before opening it', () => {
    writeFileSync(join(work, 'names-passwd.qcow2'), header(() => {}, '/etc/passwd'));
    const r = runCli(['convert', '--untrusted', '-O', 'raw', 'names-passwd.qcow2', 'out.raw'], { cwd: work });
    expect(r.status).toBe(1);
    expect(r.stderr).toContain("backing file '/etc/passwd'");
    expect(r.stderr).toContain('untrusted');
  });
});
