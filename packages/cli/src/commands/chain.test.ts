import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hasQemuImg, qemuImg, qemuIo, requireQemuImg } from '../../../../fixtures/corpus.js';
import { CLI_MAIN, qcowkit } from '../test-support/run-cli.js';

requireQemuImg();


function img(args: string[], cwd: string): void {
  const r = qemuImg(args, { cwd });
  expect(r.status, `qemu-img ${args.join(' ')}: ${r.stderr}`).toBe(0);
}

/** The drawn tree without the sizes (allocated sizes depend on the file system). */
function skeleton(text: string): string {
  return text.replace(/ {2}(raw|qcow2), [^[\n]*\[/g, ' [');
}

interface JsonImage {
  filename: string;
  role: string;
  format?: string;
  'virtual-size'?: number;
  'actual-size'?: number;
  backing?: string;
  overlays: string[];
  snapshots: Array<{ id: string; name: string }>;
  problems: Array<{ code: string; severity: string; message: string }>;
}

function chainJson(args: string[], cwd: string): { images: JsonImage[]; roots: string[]; status: number } {
  const r = qcowkit(['chain', '--output', 'json', ...args], cwd);
  expect(r.stderr).toBe('');
  return { ...(JSON.parse(r.stdout) as { images: JsonImage[]; roots: string[] }), status: r.status };
}

function problemsOf(images: JsonImage[], filename: string): string[] {
  return images.find((i) => i.filename === filename)!.problems.map((p) => p.code);
}

describe.runIf(hasQemuImg())('qcowkit chain', { timeout: 120_000 }, () => {
  const work = mkdtempSync(join(tmpdir(), 'qcowkit-chain-cli-'));
  afterAll(() => rmSync(work, { recursive: true, force: true }));
  beforeAll(() => {
    expect(existsSync(CLI_MAIN), `${CLI_MAIN} is missing: build first (npx tsc -b packages/qcow2 packages/cli)`).toBe(true);
  });

  it('draws two branches over three levels, finds qcow2 by magic, with sizes and snapshots', () => {
    const dir = join(work, 'tree');
    mkdirSync(join(dir, 'sub'), { recursive: true });
    img(['create', '-q', '-f', 'raw', 'base.raw', '1M'], dir);
    img(['create', '-q', '-f', 'qcow2', '-b', 'base.raw', '-F', 'raw', 'mid1.qcow2'], dir);
    img(['create', '-q', '-f', 'qcow2', '-b', 'base.raw', '-F', 'raw', 'mid2.qcow2'], dir);
    img(['create', '-q', '-f', 'qcow2', '-b', 'mid1.qcow2', '-F', 'qcow2', 'top1a.qcow2'], dir);
    // No .qcow2 extension, in a subdirectory, naming its backing file through '..': found by magic.
    img(['create', '-q', '-f', 'qcow2', '-b', '../mid1.qcow2', '-F', 'qcow2', 'sub/top1b.disk'], dir);
    img(['create', '-q', '-f', 'qcow2', '-b', 'mid2.qcow2', '-F', 'qcow2', 'top2.qcow2'], dir);
    qemuIo(['-f', 'qcow2', '-c', 'write -P 1 0 64k', 'top2.qcow2'], { cwd: dir });
    img(['snapshot', '-c', 'before-upgrade', 'top2.qcow2'], dir);
    writeFileSync(join(dir, 'notes.txt'), 'not an image\n');

    const r = qcowkit(['chain', 'tree'], work);
    expect(r.status, r.stderr).toBe(0);
    expect(skeleton(r.stdout)).toBe(
      [
        'tree/base.raw [base]',
        '├── tree/mid1.qcow2 [overlay]',
        '│   ├── tree/sub/top1b.disk [active]',
        '│   └── tree/top1a.qcow2 [active]',
        '└── tree/mid2.qcow2 [overlay]',
        '    └── tree/top2.qcow2 [active]',
        '            snapshots: 1 "before-upgrade"',
        '',
        '6 images, 0 errors, 0 warnings',
        '',
      ].join('\n'),
    );
    expect(r.stdout).toMatch(/^tree\/base\.raw {2}raw, 1 MiB virtual, [\d.]+ [KM]?i?B allocated {2}\[base\]$/m);
    expect(r.stdout).toMatch(/tree\/top2\.qcow2 {2}qcow2, 1 MiB virtual, [\d.]+ KiB allocated {2}\[active\]/);

    const json = chainJson(['tree'], work);
    expect(json.status).toBe(0);
    expect(json.roots).toEqual(['tree/base.raw']);
    const top2 = json.images.find((i) => i.filename === 'tree/top2.qcow2')!;
    expect(top2).toMatchObject({ role: 'active', format: 'qcow2', 'virtual-size': 1048576, backing: 'tree/mid2.qcow2', overlays: [], problems: [] });
    expect(top2['actual-size']).toBe(statSync(join(dir, 'top2.qcow2')).blocks * 512);
    expect(top2.snapshots).toEqual([{ id: '1', name: 'before-upgrade' }]);
    expect(json.images.find((i) => i.filename === 'tree/mid1.qcow2')!.overlays).toEqual(['tree/sub/top1b.disk', 'tree/top1a.qcow2']);
    expect(json.images.map((i) => i.filename)).not.toContain('tree/notes.txt');
  });

  it('flags a missing backing file', () => {
    const dir = join(work, 'missing');
    mkdirSync(dir);
    img(['create', '-q', '-f', 'qcow2', '-u', '-b', 'gone.qcow2', '-F', 'qcow2', 'orphan.qcow2', '1M'], dir);
    const r = qcowkit(['chain', 'missing'], work);
    expect(r.status).toBe(2);
    expect(skeleton(r.stdout)).toContain(
      ["missing/gone.qcow2  (missing)", '└── missing/orphan.qcow2 [active]', "        ✗ error: backing file 'gone.qcow2' (missing/gone.qcow2) not found"].join('\n'),
    );
    expect(problemsOf(chainJson(['missing'], work).images, 'missing/orphan.qcow2')).toEqual(['BACKING_MISSING']);
  });

  it('flags a backing format that does not match the file (qcow2 named raw, raw named qcow2)', () => {
    const dir = join(work, 'format');
    mkdirSync(dir);
    img(['create', '-q', '-f', 'raw', 'disk.raw', '1M'], dir);
    img(['create', '-q', '-f', 'qcow2', 'disk.qcow2', '1M'], dir);
    img(['create', '-q', '-f', 'qcow2', '-u', '-b', 'disk.raw', '-F', 'qcow2', 'says-qcow2.qcow2', '1M'], dir);
    img(['create', '-q', '-f', 'qcow2', '-u', '-b', 'disk.qcow2', '-F', 'raw', 'says-raw.qcow2', '1M'], dir);
    const r = qcowkit(['chain', 'format'], work);
    expect(r.status).toBe(2);
    expect(r.stdout).toContain("✗ error: backing format says qcow2 but 'disk.raw' is raw");
    expect(r.stdout).toContain("✗ error: backing format says raw but 'disk.qcow2' is qcow2");
    const json = chainJson(['format'], work);
    expect(problemsOf(json.images, 'format/says-qcow2.qcow2')).toEqual(['BACKING_FORMAT_MISMATCH']);
    expect(problemsOf(json.images, 'format/says-raw.qcow2')).toEqual(['BACKING_FORMAT_MISMATCH']);
  });

  it('flags overlays larger and smaller than their backing file (warnings: exit 0)', () => {
    const dir = join(work, 'sizes');
    mkdirSync(dir);
    img(['create', '-q', '-f', 'qcow2', 'base.qcow2', '1M'], dir);
    img(['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', 'larger.qcow2', '2M'], dir);
    img(['create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', 'smaller.qcow2', '512K'], dir);
    const r = qcowkit(['chain', 'sizes'], work);
    expect(r.status).toBe(0);
    expect(r.stdout).toContain("! warning: overlay (2097152 bytes) is larger than its backing file (1048576 bytes): reads zeros past the backing file's end");
    expect(r.stdout).toContain('! warning: overlay (524288 bytes) is smaller than its backing file (1048576 bytes)');
    expect(r.stdout).toContain('0 errors, 2 warnings');
    const json = chainJson(['sizes'], work);
    expect(problemsOf(json.images, 'sizes/larger.qcow2')).toEqual(['SIZE_MISMATCH']);
    expect(problemsOf(json.images, 'sizes/smaller.qcow2')).toEqual(['SIZE_MISMATCH']);
  });

  it('flags a loop and still draws it, once', () => {
    const dir = join(work, 'loop');
    mkdirSync(dir);
    img(['create', '-q', '-f', 'qcow2', 'a.qcow2', '1M'], dir);
    img(['create', '-q', '-f', 'qcow2', '-b', 'a.qcow2', '-F', 'qcow2', 'b.qcow2'], dir);
    img(['create', '-q', '-f', 'qcow2', '-b', 'b.qcow2', '-F', 'qcow2', 'c.qcow2'], dir);
    img(['rebase', '-u', '-b', 'b.qcow2', '-F', 'qcow2', 'a.qcow2'], dir);
    const r = qcowkit(['chain', 'loop'], work);
    expect(r.status).toBe(2);
    expect(skeleton(r.stdout)).toBe(
      [
        'loop/a.qcow2 [overlay]',
        '│   ✗ error: backing chain loops: loop/a.qcow2 -> loop/b.qcow2 -> loop/a.qcow2',
        '└── loop/b.qcow2 [overlay]',
        '    │   ✗ error: backing chain loops: loop/a.qcow2 -> loop/b.qcow2 -> loop/a.qcow2',
        '    ├── loop/a.qcow2  (loop: drawn above)',
        '    └── loop/c.qcow2 [active]',
        '',
        '3 images, 2 errors, 0 warnings',
        '',
      ].join('\n'),
    );
    const json = chainJson(['loop'], work);
    expect(problemsOf(json.images, 'loop/a.qcow2')).toEqual(['BACKING_LOOP']);
    expect(problemsOf(json.images, 'loop/b.qcow2')).toEqual(['BACKING_LOOP']);
    expect(problemsOf(json.images, 'loop/c.qcow2')).toEqual([]);
  });

  it('flags an absolute backing path outside the given directories, without opening it', () => {
    const dir = join(work, 'scope');
    const outside = join(work, 'elsewhere');
    mkdirSync(dir);
    mkdirSync(outside);
    img(['create', '-q', '-f', 'qcow2', join(outside, 'base.qcow2'), '1M'], work);
    img(['create', '-q', '-f', 'qcow2', '-b', join(outside, 'base.qcow2'), '-F', 'qcow2', 'escapes.qcow2'], dir);
    img(['create', '-q', '-f', 'qcow2', 'inside.qcow2', '1M'], dir);
    img(['create', '-q', '-f', 'qcow2', '-b', join(dir, 'inside.qcow2'), '-F', 'qcow2', 'absolute-inside.qcow2'], dir);
    const json = chainJson(['scope'], work);
    expect(json.status).toBe(2);
    expect(problemsOf(json.images, 'scope/escapes.qcow2')).toEqual(['BACKING_OUTSIDE']);
    const named = json.images.find((i) => i.filename === join(outside, 'base.qcow2'))!;
    expect(named.role).toBe('not-opened');
    expect(named.format).toBeUndefined();
    // An absolute name inside the given paths is fine.
    expect(problemsOf(json.images, 'scope/absolute-inside.qcow2')).toEqual([]);
    // Given both directories, the same reference is inside.
    expect(problemsOf(chainJson(['scope', 'elsewhere'], work).images, 'scope/escapes.qcow2')).toEqual([]);
    const human = qcowkit(['chain', 'scope'], work).stdout;
    expect(human).toContain(`${join(outside, 'base.qcow2')}  (not opened: outside the given paths)`);
  });

  it('never opens what it should not: a FIFO named as backing file, and never writes', () => {
    const dir = join(work, 'hostile');
    mkdirSync(dir);
    spawnSync('mkfifo', [join(dir, 'pipe')]);
    img(['create', '-q', '-f', 'qcow2', '-u', '-b', 'pipe', '-F', 'raw', 'hostile.qcow2', '1M'], dir);
    copyFileSync(join(dir, 'hostile.qcow2'), join(work, 'hostile.before'));
    const r = spawnSync(process.execPath, [CLI_MAIN, 'chain', 'hostile'], { cwd: work, encoding: 'utf8', timeout: 20_000 });
    expect(r.status).toBe(2);
    expect(r.stdout).toContain('not a regular file');
    expect(readFileSync(join(dir, 'hostile.qcow2')).equals(readFileSync(join(work, 'hostile.before')))).toBe(true);
    const missing = qcowkit(['chain', 'no-such-dir'], work);
    expect(missing.status).toBe(1);
    expect(missing.stderr).toContain("Could not open 'no-such-dir': No such file or directory");
  });
});
