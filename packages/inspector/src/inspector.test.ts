import { execFile, execFileSync, spawnSync } from 'node:child_process';
import { promisify } from 'node:util';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { corpusDir } from '../../../fixtures/corpus.js';
import { startRangeServer, type RangeServer } from '../../qcow2/src/test-support/range-server.js';
import { CLI_MAIN } from '../../cli/src/test-support/run-cli.js';
import { launchChromium } from './chromium.js';

/**
 * The inspector page in a real headless Chromium (Debian's), opened from file:// as a user would, checked
 * against qemu-img and qemu-io on the same files.
 */
const PAGE = pathToFileURL(join(import.meta.dirname, '../dist/index.html')).href;
const SCREENSHOT = join(tmpdir(), 'qcowkit-inspector', 'inspector.png');
const corpus = corpusDir();
const env = { ...process.env, TZ: 'UTC' };
let browser: Browser;
let work: string;
let server: RangeServer;

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'qcowkit-web-inspector-'));
  for (const name of ['top.qcow2', 'mid.qcow2', 'base.raw']) copyFileSync(join(corpus, 'chain', name), join(work, name));
  for (const name of ['zstd.qcow2', 'snapshots.qcow2']) copyFileSync(join(corpus, name), join(work, name));
  // Hostile: the L1 table offset is not cluster-aligned.
  const hostile = readFileSync(join(corpus, 'zstd.qcow2'));
  hostile.writeBigUInt64BE(0x1234n, 40);
  writeFileSync(join(work, 'hostile.qcow2'), hostile);
  server = await startRangeServer(work);
  browser = await launchChromium();
}, 120_000);

afterAll(async () => {
  await browser?.close();
  await server?.close();
  rmSync(work, { recursive: true, force: true });
});

const qemuImg = (args: string[]): string => execFileSync('qemu-img', args, { cwd: work, env, encoding: 'utf8' });

function qemuIoHex(image: string, offset: number, length: number): string {
  const out = execFileSync('qemu-io', ['-r', '-c', `read -v ${offset} ${length}`, image], { cwd: work, env, encoding: 'utf8' });
  return out.split('\n').filter((line) => /^[0-9a-f]{8}:/.test(line)).join('\n');
}

async function openPage(): Promise<Page> {
  const context = await browser.newContext({ timezoneId: 'UTC', viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const errors: string[] = [];
  page.on('pageerror', (error) => errors.push(error.message));
  (page as Page & { errors: string[] }).errors = errors;
  await page.goto(PAGE);
  return page;
}

async function pick(page: Page, files: string[], top: string): Promise<void> {
  await page.fill('#top', top);
  await page.setInputFiles('#files', files.map((name) => join(work, name)));
  await page.waitForSelector('body[data-state=ready], body[data-state=error]', { timeout: 30_000 });
}

async function hexAt(page: Page, offset: number): Promise<string> {
  await page.fill('#hex-offset', String(offset));
  await page.click('#hex-go');
  await page.waitForFunction((o) => document.getElementById('hex')!.textContent!.startsWith(o.toString(16).padStart(8, '0')), offset);
  return (await page.textContent('#hex'))!;
}

/** Bytes of each kind in qemu-img map --output=json, classified as the page's legend classifies them. */
function qemuMapTotals(image: string): Record<string, number> {
  const totals: Record<string, number> = { data: 0, compressed: 0, zero: 0, backing: 0, unallocated: 0 };
  for (const e of JSON.parse(qemuImg(['map', '--output=json', image])) as Array<{ length: number; depth: number; present: boolean; data: boolean; offset?: number }>) {
    const kind = !e.present ? 'unallocated' : e.depth > 0 ? 'backing' : !e.data ? 'zero' : e.offset === undefined ? 'compressed' : 'data';
    totals[kind]! += e.length;
  }
  return totals;
}

async function pageTotals(page: Page): Promise<Record<string, number>> {
  return page.$$eval('#totals li', (items) => Object.fromEntries(items.map((li) => [li.getAttribute('data-kind'), Number(li.getAttribute('data-bytes'))])));
}

describe('the inspector page in headless Chromium', () => {
  it('shows an overlay chain picked from disk as qemu-img and qemu-io show it', async () => {
    const page = await openPage();
    // Picked in any order, the top image is found by itself: the one no other names as its backing file.
    await pick(page, ['base.raw', 'mid.qcow2', 'top.qcow2'], '');
    expect(await page.getAttribute('body', 'data-state')).toBe('ready');
    // Header and features in qemu-img info's words (the page cannot know the host's allocated size).
    const withoutDiskSize = (text: string): string => text.replace(/^disk size: .*\n/m, '');
    expect(withoutDiskSize((await page.textContent('#info'))!)).toBe(withoutDiskSize(qemuImg(['info', 'top.qcow2'])));
    const json = JSON.parse((await page.textContent('#info-json'))!) as Record<string, unknown>;
    const theirs = JSON.parse(qemuImg(['info', '--output=json', 'top.qcow2'])) as Record<string, unknown>;
    delete theirs['actual-size'];
    expect(json).toEqual(theirs);
    // The backing chain, top first, as qemu-img info --backing-chain names it.
    const chain = (JSON.parse(qemuImg(['info', '--backing-chain', '--output=json', 'top.qcow2'])) as Array<{ filename: string }>).map((i) => i.filename);
    expect(await page.$$eval('.chain-node', (nodes) => nodes.map((n) => n.getAttribute('data-filename')))).toEqual(chain);
    // The allocation map's totals, against qemu-img map.
    expect(await pageTotals(page)).toEqual(qemuMapTotals('top.qcow2'));
    expect(await page.$$eval('#map .cell', (cells) => cells.length)).toBe(8);
    // Hex view at guest offsets in each layer, against qemu-io read -v.
    for (const offset of [0, 16384 + 100, 65536, 131072 - 256]) expect(await hexAt(page, offset)).toBe(qemuIoHex('top.qcow2', offset, 256));
    await page.fill('#hex-offset', '0');
    await page.click('#hex-go');
    mkdirSync(join(tmpdir(), 'qcowkit-inspector'), { recursive: true });
    await page.screenshot({ path: SCREENSHOT, fullPage: true });
    console.log(`inspector screenshot: ${SCREENSHOT}`);
    expect((page as Page & { errors: string[] }).errors).toEqual([]);
  });

  it('decodes zstd clusters with the inlined WebAssembly module, and lists snapshots as qemu-img snapshot -l', async () => {
    const page = await openPage();
    await pick(page, ['zstd.qcow2'], 'zstd.qcow2');
    expect(await pageTotals(page)).toEqual(qemuMapTotals('zstd.qcow2'));
    expect((await pageTotals(page)).compressed).toBeGreaterThan(0);
    for (const offset of [0, 300_000]) {
      const [ours, theirs] = [await hexAt(page, offset), qemuIoHex('zstd.qcow2', offset, 256)];
      if (ours !== theirs) console.log(`ours:\n${ours}\ntheirs:\n${theirs}`);
      expect(ours).toBe(theirs);
    }
    await pick(page, ['snapshots.qcow2'], 'snapshots.qcow2');
    expect(await page.textContent('#snapshots')).toBe(qemuImg(['snapshot', '-l', 'snapshots.qcow2']));
  });

  it('opens ?url= with range requests (only what it needs), backing files relative to the URL', async () => {
    const page = await openPage();
    server.reset();
    await page.goto(`${PAGE}?url=${encodeURIComponent(`${server.url}top.qcow2`)}`);
    await page.waitForSelector('body[data-state=ready], body[data-state=error]', { timeout: 30_000 });
    expect(await page.textContent('#error')).toBe('');
    // qemu-img runs asynchronously here: the server it reads from lives in this process.
    const { stdout } = await promisify(execFile)('qemu-img', ['info', '--output=json', `${server.url}top.qcow2`], { cwd: work });
    const info = JSON.parse(stdout) as Record<string, unknown>;
    const json = JSON.parse((await page.textContent('#info-json'))!) as Record<string, unknown>;
    expect(json).toEqual(info);
    expect(await pageTotals(page)).toEqual(qemuMapTotals('top.qcow2'));
    expect(server.ranges.length).toBeGreaterThan(0);
    expect(server.ranges.every((range) => /^bytes=\d+-\d+$/.test(range))).toBe(true);
  });

  it('gives a hostile image the CLI one-line error, on the page', async () => {
    const page = await openPage();
    await pick(page, ['hostile.qcow2'], 'hostile.qcow2');
    expect(await page.getAttribute('body', 'data-state')).toBe('error');
    const cli = spawnSync(process.execPath, [CLI_MAIN, 'info', 'hostile.qcow2'], { cwd: work, encoding: 'utf8' });
    expect(cli.status).toBe(1);
    expect(await page.textContent('#error')).toBe(cli.stderr.trim());
    expect(await page.isVisible('#error')).toBe(true);
    expect(await page.isVisible('#view')).toBe(false);
  });
});
