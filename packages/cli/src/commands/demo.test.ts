import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hasQemuImg, qemuImg, requireQemuImg } from '../../../../fixtures/corpus.js';
import { DEMO_DISK_SIZE, DEMO_LAYOUT, demoNoise, demoText } from './demo.js';

requireQemuImg();

const cli = fileURLToPath(new URL('../../dist/main.js', import.meta.url));
const FILES = ['disk.raw', 'disk.qcow2', 'disk-compressed.qcow2'];

function runDemo(args: string[], cwd: string): { stdout: string; stderr: string; status: number } {
  const r = spawnSync(process.execPath, [cli, 'demo', ...args], { cwd, encoding: 'utf8' });
  if (r.error) throw r.error;
  return { stdout: r.stdout, stderr: r.stderr, status: r.status ?? -1 };
}

function sha256(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

describe('qcowkit demo', () => {
  let root: string;
  let dir: string;
  let output: { stdout: string; stderr: string; status: number };

  beforeAll(() => {
    root = mkdtempSync(join(tmpdir(), 'qcowkit-demo-test-'));
    dir = join(root, 'first');
    output = runDemo([dir], root);
  });

  afterAll(() => {
    if (root !== undefined) rmSync(root, { recursive: true, force: true });
  });

  it('runs every step, announced with its command line, and ends with the file sizes', () => {
    expect(output.stderr).toBe('');
    expect(output.status).toBe(0);
    const commands = output.stdout.split('\n').filter((line) => line.startsWith('$ '));
    expect(commands).toEqual([
      `$ cd ${dir}`,
      '$ qcowkit create -f raw disk.raw 64M',
      "$ qcowkit io -f raw -c 'write -q -P 0x5a 4M 3M' -c 'write -q -z 8M 1M' disk.raw",
      '$ qcowkit measure -O qcow2 disk.raw',
      '$ qcowkit convert -f raw -O qcow2 disk.raw disk.qcow2',
      '$ qcowkit convert -c -f raw -O qcow2 disk.raw disk-compressed.qcow2',
      '$ qcowkit info disk.qcow2',
      '$ qcowkit map disk.qcow2',
      '$ qcowkit map --output=json disk-compressed.qcow2',
      '$ qcowkit compare -f raw -F qcow2 disk.raw disk.qcow2',
      '$ qcowkit compare -f raw -F qcow2 disk.raw disk-compressed.qcow2',
    ]);
    expect(output.stdout).toContain('Images are identical.\n');
    expect(output.stdout).toContain('image: disk.qcow2\nfile format: qcow2\nvirtual size: 64 MiB (67108864 bytes)\n');
    const sizes = output.stdout.slice(output.stdout.indexOf('# file sizes'));
    for (const file of FILES) expect(sizes).toMatch(new RegExp(`^${file.replace('.', '\\.')} .*\\(\\d+ bytes\\)`, 'm'));
  });

  it('makes the raw disk it describes: text, a pattern run, written zeros, noise, holes', () => {
    const disk = readFileSync(join(dir, 'disk.raw'));
    expect(disk.length).toBe(DEMO_DISK_SIZE);
    for (const { offset, length } of DEMO_LAYOUT.text) expect(disk.subarray(offset, offset + length).equals(demoText(offset, length))).toBe(true);
    expect(disk.subarray(0, 64).toString()).toBe(`qcowkit demo disk, line 0000000: a raw disk becomes qcow2${'.'.repeat(6)}\n`);
    const { pattern, zeros, noise } = DEMO_LAYOUT;
    expect(disk.subarray(pattern.offset, pattern.offset + pattern.length).every((b) => b === pattern.byte)).toBe(true);
    expect(disk.subarray(zeros.offset, zeros.offset + zeros.length).every((b) => b === 0)).toBe(true);
    expect(disk.subarray(noise.offset, noise.offset + noise.length).equals(demoNoise(noise.length))).toBe(true);
    const nonZero = disk.reduce((count, b) => count + (b === 0 ? 0 : 1), 0);
    expect(nonZero).toBe(2 * 1024 * 1024 + pattern.length + disk.subarray(noise.offset, noise.offset + noise.length).reduce((c, b) => c + (b === 0 ? 0 : 1), 0));
  });

  it('is deterministic: a second run makes the same bytes', () => {
    const again = join(root, 'second');
    expect(runDemo([again], root).status).toBe(0);
    for (const file of FILES) expect(sha256(join(again, file)), file).toBe(sha256(join(dir, file)));
  });

  it('works in a new temporary directory by default, and names it', () => {
    const run = runDemo([], root);
    expect(run.status).toBe(0);
    const made = /^# qcowkit demo: .* in (\S+)$/m.exec(run.stdout)?.[1];
    expect(made).toBeDefined();
    try {
      for (const file of FILES) expect(existsSync(join(made!, file)), file).toBe(true);
    } finally {
      rmSync(made!, { recursive: true, force: true });
    }
  });

  it.runIf(hasQemuImg())('makes qcow2 images that qemu-img checks clean and finds identical to the raw disk', () => {
    for (const file of ['disk.qcow2', 'disk-compressed.qcow2']) {
      const check = qemuImg(['check', file], { cwd: dir });
      expect(check.status, `qemu-img check ${file}: ${check.stdout}${check.stderr}`).toBe(0);
      expect(check.stdout).toContain('No errors were found on the image.');
      const compare = qemuImg(['compare', '-f', 'raw', '-F', 'qcow2', 'disk.raw', file], { cwd: dir });
      expect(compare.status, `qemu-img compare disk.raw ${file}: ${compare.stdout}${compare.stderr}`).toBe(0);
      expect(compare.stdout).toBe('Images are identical.\n');
    }
    const compressed = qemuImg(['check', '--output=json', 'disk-compressed.qcow2'], { cwd: dir });
    expect((JSON.parse(compressed.stdout) as { 'compressed-clusters': number })['compressed-clusters']).toBeGreaterThan(0);
  });

  it.runIf(hasQemuImg())("shows qemu-img's own numbers for measure, info and map", () => {
    const section = (command: string): string => {
      const start = output.stdout.indexOf(`$ qcowkit ${command}\n`) + `$ qcowkit ${command}\n`.length;
      return output.stdout.slice(start, output.stdout.indexOf('\n\n', start) + 1);
    };
    expect(section('measure -O qcow2 disk.raw')).toBe(qemuImg(['measure', '-O', 'qcow2', 'disk.raw'], { cwd: dir }).stdout);
    expect(section('map disk.qcow2')).toBe(qemuImg(['map', 'disk.qcow2'], { cwd: dir }).stdout);
    expect(section('map --output=json disk-compressed.qcow2')).toBe(qemuImg(['map', '--output=json', 'disk-compressed.qcow2'], { cwd: dir }).stdout);
    const info = section('info disk.qcow2').replace(/^disk size: .*\n/m, '');
    expect(info).toBe(qemuImg(['info', 'disk.qcow2'], { cwd: dir }).stdout.replace(/^disk size: .*\n/m, ''));
  });
});
