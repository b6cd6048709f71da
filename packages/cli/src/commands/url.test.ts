import { execFile, execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { corpusDir } from '../../../../fixtures/corpus.js';
import { startRangeServer, type RangeServer } from '../../../qcow2/src/test-support/range-server.js';
import { CLI_MAIN, type Run } from '../test-support/run-cli.js';

/** Runs a command without blocking this process: the HTTP server under test lives in it. */
function runAsync(command: string, args: string[], cwd: string): Promise<Run> {
  return new Promise((resolve) => {
    execFile(command, args, { cwd, encoding: 'utf8', maxBuffer: 256 * 1024 * 1024, timeout: 120_000 }, (error, stdout, stderr) => {
      const status = error === null ? 0 : typeof error.code === 'number' ? error.code : -1;
      resolve({ stdout, stderr, status });
    });
  });
}
const qcowkit = (args: string[], cwd: string): Promise<Run> => runAsync(process.execPath, [CLI_MAIN, ...args], cwd);
const qemu = (args: string[], cwd: string): Promise<Run> => runAsync('qemu-img', args, cwd);

/**
 * qcowkit reads images by URL wherever it reads an image, and qemu-img's curl driver (Debian's
 * qemu-block-extra) is the referee on the very same URLs, served by a local range-capable server.
 */
const corpus = corpusDir();
let server: RangeServer;
let noRanges: RangeServer;
let work: string;

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'qcowkit-web-url-'));
  // A 100 GiB disk with 8 MiB of data spread over it: a map must read its tables, not its data.
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', join(work, 'sparse.qcow2'), '100G']);
  const writes = Array.from({ length: 8 }, (_, i) => `-c "write -P ${i + 1} ${i * 12}G 1M"`).join(' ');
  execFileSync('sh', ['-c', `qemu-io -f qcow2 ${writes} ${join(work, 'sparse.qcow2')} >/dev/null`]);
  server = await startRangeServer(corpus);
  noRanges = await startRangeServer(corpus, { ranges: false });
});

afterAll(async () => {
  await server?.close();
  await noRanges?.close();
  rmSync(work, { recursive: true, force: true });
});

const IMAGES = ['chain/top.qcow2', 'zstd.qcow2', 'zlib.qcow2', 'snapshots.qcow2', 'sparse-100g.qcow2', 'extl2.qcow2', 'raw.img'];

describe('qcowkit on http:// URLs, against qemu-img (curl driver) on the same URLs', () => {
  it.each(IMAGES)('info --output=json %s', async (image) => {
    const ours = await qcowkit(['info', '--output=json', server.url + image], work);
    const theirs = await qemu(['info', '--output=json', server.url + image], work);
    expect(theirs.status).toBe(0);
    expect(ours.stderr).toBe('');
    expect(ours.stdout).toBe(theirs.stdout);
  });

  it('info --backing-chain resolves backing files against the URL', async () => {
    const ours = await qcowkit(['info', '--backing-chain', '--output=json', `${server.url}chain/top.qcow2`], work);
    const theirs = await qemu(['info', '--backing-chain', '--output=json', `${server.url}chain/top.qcow2`], work);
    expect(theirs.stdout).toContain(`${server.url}chain/base.raw`);
    expect(ours.stdout).toBe(theirs.stdout);
  });

  it.each(['chain/top.qcow2', 'zstd.qcow2', 'zlib.qcow2', 'snapshots.qcow2'])('convert -O raw %s gives the bytes qemu-img gives from the local file', async (image) => {
    const ours = join(work, 'ours.raw');
    const theirs = join(work, 'theirs.raw');
    expect((await qcowkit(['convert', '-O', 'raw', server.url + image, ours], work)).status).toBe(0);
    expect((await qemu(['convert', '-O', 'raw', join(corpus, image), theirs], work)).status).toBe(0);
    expect(readFileSync(ours).equals(readFileSync(theirs))).toBe(true);
  });

  it('map --output=json and check --output=json print what qemu-img prints for the URL', async () => {
    for (const args of [['map', '--output=json'], ['check', '--output=json']]) {
      const ours = await qcowkit([...args, `${server.url}chain/top.qcow2`], work);
      const theirs = await qemu([...args, `${server.url}chain/top.qcow2`], work);
      expect(ours.stdout).toBe(theirs.stdout);
      expect(ours.status).toBe(theirs.status);
    }
  });

  it('compare: a URL and the local file are identical', async () => {
    const r = await qcowkit(['compare', `${server.url}zstd.qcow2`, join(corpus, 'zstd.qcow2')], work);
    expect(r.stdout).toBe('Images are identical.\n');
    expect(r.status).toBe(0);
  });

  it('a map of a sparse 100 GiB image moves only its metadata', async () => {
    const local = await startRangeServer(work);
    try {
      const ours = await qcowkit(['map', '--output=json', `${local.url}sparse.qcow2`], work);
      const moved = local.bytesSent;
      const theirs = await qemu(['map', '--output=json', join(work, 'sparse.qcow2')], work);
      expect(ours.stdout).toBe(theirs.stdout);
      const fileSize = statSync(join(work, 'sparse.qcow2')).size;
      console.log(`map of a 100 GiB image (file ${fileSize} bytes): ${moved} bytes in ${local.requests} requests`);
      expect(fileSize).toBeGreaterThan(8 * 1024 * 1024);
      // Header, L1 (200 entries), the 8 L2 tables in use, and cache blocks around them: well under 1 MiB.
      expect(moved).toBeLessThan(1024 * 1024);
    } finally {
      await local.close();
    }
  });

  it('a server without range support is refused with one line, like a missing file', async () => {
    const r = await qcowkit(['info', `${noRanges.url}zstd.qcow2`], work);
    expect(r.status).toBe(1);
    expect(r.stderr).toBe(`qcowkit: ${noRanges.url}zstd.qcow2: the server does not support range requests (it answered 200 with the whole file instead of 206); qcowkit reads images over HTTP only with them\n`);
    const missing = await qcowkit(['info', `${server.url}no-such.qcow2`], work);
    expect(missing.status).toBe(1);
    expect(missing.stderr).toBe(`qcowkit: ${server.url}no-such.qcow2: No such file or directory (HTTP 404)\n`);
  });
});
