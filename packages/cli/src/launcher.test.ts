import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, statSync, utimesSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { qemuImg, qemuIo, requireQemuImg } from '../../../fixtures/corpus.js';
import { CLI_MAIN } from './test-support/run-cli.js';

requireQemuImg();

/** What users run: the installed bin (npx qcowkit), which runs the bundle (npm run build makes it). */
const BIN = fileURLToPath(new URL('../bin/qcowkit.js', import.meta.url));
const BUNDLE = fileURLToPath(new URL('../dist/qcowkit.cjs', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'qcowkit-launcher-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function run(entry: string, args: string[], env: NodeJS.ProcessEnv = {}): { stdout: string; stderr: string; status: number } {
  const r = spawnSync(process.execPath, [entry, ...args], { cwd: dir, encoding: 'utf8', env: { ...process.env, ...env }, maxBuffer: 16 * 1024 * 1024 });
  return { stdout: r.stdout, stderr: r.stderr, status: r.status ?? -1 };
}

describe('the qcowkit bin and its bundle', () => {
  it('runs the bundle with its code cache and a thread pool sized for convert', () => {
    expect(existsSync(BUNDLE), 'dist/qcowkit.cjs missing: run `npm run build` (tsc, then scripts/bundle.mjs)').toBe(true);
    const r = run(BIN, ['--version'], { QCOWKIT_LAUNCH_TRACE: '1', UV_THREADPOOL_SIZE: '' });
    expect(r.status).toBe(0);
    expect(r.stderr).toContain('launch: bundle, code cache accepted, UV_THREADPOOL_SIZE=8');
    expect(r.stdout.trim()).toBe('0.1.0');
    // A pool size the user chose is left alone.
    expect(run(BIN, ['--version'], { QCOWKIT_LAUNCH_TRACE: '1', UV_THREADPOOL_SIZE: '3' }).stderr).toContain('UV_THREADPOOL_SIZE=3');
  });

  it('falls back to dist/main.js when the bundle is older than the last TypeScript build', () => {
    const built = statSync(BUNDLE).mtime;
    const buildInfo = fileURLToPath(new URL('../tsconfig.tsbuildinfo', import.meta.url));
    if (!existsSync(buildInfo)) return; // an installed package has no build info: the bundle is all there is
    const compiled = statSync(buildInfo).mtime;
    try {
      utimesSync(BUNDLE, built, new Date(compiled.getTime() - 60_000));
      const r = run(BIN, ['--version'], { QCOWKIT_LAUNCH_TRACE: '1' });
      expect(r.stderr).toContain('launch: dist/main.js');
      expect(r.stdout.trim()).toBe('0.1.0');
    } finally {
      utimesSync(BUNDLE, built, built);
    }
  });

  it('gives the same answers as the unbundled CLI: info, map of a sparse raw file (native holes), help', () => {
    qemuImg(['create', '-q', '-f', 'raw', 'sparse.raw', '64M'], { cwd: dir });
    expect(qemuIo(['-f', 'raw', '-c', 'write -q -P 0x5a 8M 1M', 'sparse.raw'], { cwd: dir }).status).toBe(0);
    for (const args of [['info', '--output=json', 'sparse.raw'], ['map', '--output=json', '-f', 'raw', 'sparse.raw'], ['--help'], ['info', '--help']]) {
      const bundled = run(BIN, args);
      const plain = run(CLI_MAIN, args);
      expect(bundled.stdout, args.join(' ')).toBe(plain.stdout);
      expect(bundled.status).toBe(plain.status);
    }
    // The hole after the data is found (SEEK_HOLE through the addon, located from inside the bundle).
    expect(run(BIN, ['map', '--output=json', '-f', 'raw', 'sparse.raw']).stdout).toContain('"start": 9437184, "length": 57671680, "depth": 0, "present": true, "zero": true');
  });

  it('converts with zstd (a package left out of the bundle) and with zlib', () => {
    for (const type of ['zstd', 'zlib']) {
      const out = `c-${type}.qcow2`;
      const r = run(BIN, ['convert', '-c', '-o', `compression_type=${type}`, '-f', 'raw', '-O', 'qcow2', 'sparse.raw', out]);
      expect(r.status, r.stderr).toBe(0);
      expect(qemuImg(['compare', '-f', 'raw', '-F', 'qcow2', 'sparse.raw', out], { cwd: dir }).status).toBe(0);
      expect(qemuImg(['check', out], { cwd: dir }).status).toBe(0);
    }
  });

  it('reports errors in one line, as the unbundled CLI does', () => {
    const r = run(BIN, ['info', 'missing.qcow2']);
    expect(r.status).toBe(1);
    expect(r.stderr).toBe(run(CLI_MAIN, ['info', 'missing.qcow2']).stderr);
  });
});
