import { execFile, execFileSync, spawn } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { build } from 'esbuild';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { launchChromium } from '../../inspector/src/chromium.js';
import { QemuIoHolder } from '../../qcow2/src/test-support/qemu-io-holder.js';
import { startRangeServer } from '../../qcow2/src/test-support/range-server.js';
import { examplesInMarkdown, outputMatches, type DocExample } from '../../qcow2/src/test-support/doc-examples.js';

/**
 * What a registry user gets: every workspace packed with `npm pack`, installed from the tarballs alone into a
 * scratch project (third-party dependencies from the npm cache first), and the READMEs' quick starts run
 * there as written: the Node ones with node, the CLI's with the installed `qcowkit`, the browser one bundled
 * with esbuild and run in headless Chromium.
 */
const ROOT = fileURLToPath(new URL('../../..', import.meta.url));
const PACKAGES = ['qcow2', 'snapshot', 'cli', 'inspector'];
const run = promisify(execFile);

interface Packed {
  name: string;
  filename: string;
  files: Array<{ path: string }>;
}

let work: string;
let project: string;
let packed: Packed[];

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'qcowkit-web-pack-'));
  const packs = join(work, 'packs');
  mkdirSync(packs);
  const out = execFileSync('npm', ['pack', '--json', '--pack-destination', packs, ...PACKAGES.flatMap((p) => ['-w', `packages/${p}`])], { cwd: ROOT, encoding: 'utf8' });
  packed = JSON.parse(out) as Packed[];
  project = join(work, 'project');
  mkdirSync(project);
  const dependencies = Object.fromEntries(packed.map((p) => [p.name, `file:${join(packs, p.filename)}`]));
  writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'scratch', private: true, type: 'module', dependencies }, null, 2));
  // Our packages from the tarballs alone; third-party ones from the npm cache, or the registry when not cached.
  await run('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund'], { cwd: project });
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', join(project, 'disk.qcow2'), '64M']);
}, 300_000);

afterAll(() => {
  if (work !== undefined) rmSync(work, { recursive: true, force: true });
});

const readme = (name: string): DocExample[] =>
  examplesInMarkdown(readFileSync(join(ROOT, 'packages', name, 'README.md'), 'utf8'), `packages/${name}/README.md`);

function expectOutput(example: DocExample, lines: string[]): void {
  expect(lines.length, `${example.source} printed ${lines.length} lines`).toBeGreaterThanOrEqual(example.expected.length);
  example.expected.forEach((expected, i) => expect(outputMatches(lines[i]!, expected), `${example.source}: "${lines[i]}" vs "${expected}"`).toBe(true));
}

describe('the packed tarballs', () => {
  it('each have README, LICENSE and the metadata a registry install needs; maps carry their sources; no const enums', () => {
    expect(packed.map((p) => p.name).sort()).toEqual(['@qcowkit/cli', '@qcowkit/inspector', '@qcowkit/qcow2', '@qcowkit/snapshot']);
    for (const p of packed) {
      const dir = join(ROOT, 'packages', p.name.split('/')[1]!);
      const files = p.files.map((f) => f.path);
      expect(files, p.name).toEqual(expect.arrayContaining(['README.md', 'LICENSE', 'package.json']));
      expect(readFileSync(join(dir, 'LICENSE'), 'utf8')).toMatch(/^MIT License/);
      const manifest = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as Record<string, unknown>;
      expect(manifest.license).toBe('MIT');
      expect(manifest.engines).toEqual({ node: '>=20' });
      expect(manifest.repository).toMatchObject({ type: 'git', directory: relative(ROOT, dir) });
      if (p.name !== '@qcowkit/cli') expect(manifest.sideEffects, p.name).toBe(false);
      for (const map of files.filter((f) => f.endsWith('.map'))) {
        const { sources, sourcesContent } = JSON.parse(readFileSync(join(dir, map), 'utf8')) as { sources: string[]; sourcesContent?: unknown[] };
        expect(sourcesContent?.length, `${p.name}/${map} ships without its sources`).toBe(sources.length);
      }
      for (const types of files.filter((f) => f.endsWith('.d.ts'))) expect(readFileSync(join(dir, types), 'utf8'), `${p.name}/${types}`).not.toMatch(/\bconst enum\b/);
    }
    // The native helper ships prebuilt inside @qcowkit/qcow2 whenever the repository has a prebuilt copy.
    const prebuilt = join(ROOT, 'packages/qcow2/native/prebuilt');
    if (existsSync(prebuilt)) {
      const shipped = packed.find((p) => p.name === '@qcowkit/qcow2')!.files.map((f) => f.path);
      for (const file of readdirSync(prebuilt, { recursive: true }) as string[]) {
        if (file.endsWith('.node')) expect(shipped).toContain(`native/prebuilt/${file}`);
      }
    }
  });

  it('install into a new project from the tarballs, where the Node quick starts run as written', async () => {
    const examples = readme('qcow2').filter((e) => e.place === undefined);
    expect(examples.length).toBeGreaterThanOrEqual(1);
    for (const [i, example] of examples.entries()) {
      const file = join(project, `readme-${i}.mjs`);
      writeFileSync(file, example.code);
      const { stdout } = await run(process.execPath, [file], { cwd: project });
      expectOutput(example, stdout.split('\n').filter((l) => l !== ''));
    }
  });

  it("the CLI's quick start runs with the installed qcowkit, whose version is its package's", async () => {
    const bin = join(project, 'node_modules/.bin');
    const env = { ...process.env, PATH: `${bin}:${process.env.PATH}` };
    for (const example of readme('cli')) {
      const { stdout } = await run('sh', ['-e', '-c', example.code], { cwd: project, env });
      expect(stdout).toContain('Images are identical.');
    }
    const version = (JSON.parse(readFileSync(join(project, 'node_modules/@qcowkit/cli/package.json'), 'utf8')) as { version: string }).version;
    expect((await run(join(bin, 'qcowkit'), ['--version'], { cwd: project })).stdout.trim()).toBe(version);
    // qcowkit inspect finds the installed inspector page.
    const child = spawn(join(bin, 'qcowkit'), ['inspect', '--port', '0'], { cwd: project, stdio: ['ignore', 'pipe', 'inherit'] });
    try {
      const line = await new Promise<string>((resolve) => child.stdout.once('data', (chunk: Buffer) => resolve(chunk.toString())));
      const url = /http:\/\/127\.0\.0\.1:\d+\//.exec(line)![0];
      const page = Buffer.from(await (await fetch(url)).arrayBuffer());
      expect(page.equals(readFileSync(join(project, 'node_modules/@qcowkit/inspector/dist/index.html')))).toBe(true);
    } finally {
      child.kill('SIGTERM');
    }
  });

  it.runIf(process.platform === 'linux' && process.arch === 'x64')('lock images with the prebuilt native helper: an install needs no compiler', async () => {
    // Nothing was built in the scratch project: the helper that loads is the prebuilt copy from the tarball.
    expect(existsSync(join(project, 'node_modules/@qcowkit/qcow2/native/build'))).toBe(false);
    const image = join(project, 'held.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', image, '1M']);
    const guest = await QemuIoHolder.start(image);
    try {
      const result = await run(join(project, 'node_modules/.bin/qcowkit'), ['io', '-c', 'write 0 4k', 'held.qcow2'], { cwd: project }).catch(
        (error: { code: number; stderr: string }) => error,
      );
      expect(result).toMatchObject({ code: 1, stderr: 'qcowkit: held.qcow2: Failed to get "write" lock. Is another process using the image [held.qcow2]?\n' });
    } finally {
      await guest.release();
    }
  });

  it('type-check in a project with isolatedModules, no Node types and no skipLibCheck (as Vite and esbuild users have)', async () => {
    writeFileSync(
      join(project, 'consumer.ts'),
      `import { open, memoryHost, create, info, errorCodes, type Image } from '@qcowkit/qcow2';
import { CompressionType, IncompatibleFeature } from '@qcowkit/qcow2/format';
import { SegmentKind } from '@qcowkit/qcow2/engine';
import { browserHost } from '@qcowkit/qcow2/browser';
import { httpHost } from '@qcowkit/qcow2/http';
const zstd: number = CompressionType.Zstd + IncompatibleFeature.ExtendedL2 + SegmentKind.Data;
export async function demo(): Promise<number> {
  const host = memoryHost();
  await using image: Image = await create('a.qcow2', { host, size: 1 << 20 });
  await using again = await open('a.qcow2', { host: browserHost() });
  void httpHost; void again; void errorCodes.BAD_MAGIC;
  return (await info(image))['virtual-size'] + zstd;
}
`,
    );
    writeFileSync(
      join(project, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: { target: 'ES2022', module: 'ESNext', moduleResolution: 'Bundler', lib: ['ES2022', 'DOM'], strict: true, isolatedModules: true, skipLibCheck: false, types: [], noEmit: true },
        files: ['consumer.ts'],
      }),
    );
    const tsc = await run(process.execPath, [join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', project]).catch((error: { stdout: string }) => error);
    expect('stdout' in tsc ? tsc.stdout : '').toBe('');
  });

  it("the browser quick start runs in headless Chromium from the installed packages", async () => {
    const [example] = readme('qcow2').filter((e) => e.place === 'browser');
    expect(example).toBeDefined();
    const site = join(project, 'site');
    mkdirSync(site, { recursive: true });
    writeFileSync(join(project, 'readme-browser.js'), example!.code);
    writeFileSync(
      join(project, 'browser-example.js'),
      "try { await import('./readme-browser.js'); } catch (error) { console.log('FAILED', error.code, error.message); }\nconsole.log('__done__');\n",
    );
    await build({ entryPoints: [join(project, 'browser-example.js')], bundle: true, format: 'esm', platform: 'browser', target: 'es2022', outfile: join(site, 'bundle.js'), logLevel: 'error' });
    writeFileSync(join(site, 'index.html'), '<!doctype html><meta charset="utf-8"><script type="module" src="bundle.js"></script>');
    // As the README says: zstd.wasm next to the page. And an image to open over HTTP.
    copyFileSync(join(project, 'node_modules/@bokuweb/zstd-wasm/dist/web/zstd.wasm'), join(site, 'zstd.wasm'));
    copyFileSync(join(project, 'disk.qcow2'), join(site, 'disk.qcow2'));
    const server = await startRangeServer(site);
    const browser = await launchChromium();
    try {
      const page = await browser.newPage();
      const lines: string[] = [];
      const done = new Promise<void>((resolve) =>
        page.on('console', (message) => {
          if (message.text() === '__done__') resolve();
          else if (message.type() === 'log') lines.push(message.text()); // not the browser's own (a missing favicon)
        }),
      );
      await page.goto(`${server.url}index.html`);
      await done;
      expect(lines.filter((l) => l.startsWith('FAILED'))).toEqual([]);
      expectOutput(example!, lines);
    } finally {
      await browser.close();
      await server.close();
    }
  });
});
