/**
 * The inspector page: open a qcow2 (with its backing files) picked from disk or given by ?url=, and show its
 * header as qemu-img info words it, its snapshots, its backing chain, an allocation map and a hex view. Every
 * byte is read in this page, through the engine: nothing is sent anywhere (a ?url= image is only fetched).
 */
import { info, isQcow2Error, open, read, type Image, type ImageInfo } from '@qcowkit/qcow2';
import { browserHost, type NamedBlob } from '@qcowkit/qcow2/browser';
// qemu-img's human wording, shared with the CLI (bundled from its source: pure string formatting).
import { formatImageInfo, formatSnapshotList } from '../../cli/src/output/info-human.js';
import { allocationMap, REGION_KINDS, type AllocationMap } from './allocation.js';
import { chainTree, type ChainNode } from './chain.js';
import { hexDump } from './hex.js';

const HEX_BYTES = 256;

const $ = <T extends HTMLElement>(id: string): T => document.getElementById(id) as T;

/** The zstd module, inlined into the page by the build (base64), so it works from file:// with no server. */
function zstdWasm(): Uint8Array {
  const text = $('zstd-wasm').textContent ?? '';
  const binary = atob(text.trim());
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

let current: Image | undefined;

function setStatus(text: string): void {
  $('status').textContent = text;
}

/** Errors as the CLI prints them: one line, naming the file. */
function showError(error: unknown, name: string): void {
  const message = isQcow2Error(error) ? `qcowkit: ${error.file ?? name}: ${error.message}` : `qcowkit: ${name}: ${(error as Error).message ?? String(error)}`;
  $('error').textContent = message;
  $('error').hidden = false;
}

function clearView(): void {
  $('error').hidden = true;
  $('error').textContent = '';
  for (const id of ['info', 'info-json', 'snapshots', 'hex']) $(id).textContent = '';
  $('chain').replaceChildren();
  $('map').replaceChildren();
  $('totals').replaceChildren();
  $('view').hidden = true;
}

function chainList(node: ChainNode): HTMLUListElement {
  const list = document.createElement('ul');
  const item = document.createElement('li');
  item.className = 'chain-node';
  item.dataset.filename = node.filename;
  const cluster = node.clusterSize === undefined ? '' : `, cluster ${node.clusterSize}`;
  const snapshots = node.snapshots === 0 ? '' : `, ${node.snapshots} snapshot${node.snapshots === 1 ? '' : 's'}`;
  item.textContent = `${node.filename} (${node.format}, ${node.virtualSize} bytes${cluster}${snapshots})`;
  if (node.backing !== undefined) item.append(chainList(node.backing));
  list.append(item);
  return list;
}

function drawMap(map: AllocationMap): void {
  const grid = $('map');
  for (const cell of map.cells) {
    const div = document.createElement('div');
    div.className = `cell ${cell.kind}`;
    div.dataset.kind = cell.kind;
    div.title = `${cell.offset}+${cell.length}: ${REGION_KINDS.filter((k) => cell.bytes[k] > 0)
      .map((k) => `${k} ${cell.bytes[k]}`)
      .join(', ')}`;
    grid.append(div);
  }
  const totals = $('totals');
  for (const kind of REGION_KINDS) {
    const item = document.createElement('li');
    item.dataset.kind = kind;
    item.dataset.bytes = String(map.totals[kind]);
    item.innerHTML = `<span class="swatch ${kind}"></span>`;
    item.append(`${kind}: ${map.totals[kind]} bytes`);
    totals.append(item);
  }
}

async function showHex(): Promise<void> {
  if (current === undefined) return;
  const text = ($('hex-offset') as HTMLInputElement).value.trim();
  const offset = Number(text);
  const out = $('hex');
  if (!Number.isSafeInteger(offset) || offset < 0 || offset >= current.virtualSize) {
    out.textContent = `offset must be between 0 and ${current.virtualSize - 1}`;
    return;
  }
  try {
    const bytes = await read(current, offset, Math.min(HEX_BYTES, current.virtualSize - offset));
    out.textContent = hexDump(bytes, offset);
  } catch (error) {
    showError(error, current.path);
  }
}

async function inspect(name: string, host: ReturnType<typeof browserHost>): Promise<void> {
  clearView();
  await current?.close();
  current = undefined;
  setStatus(`opening ${name}…`);
  try {
    const image = await open(name, { host });
    current = image;
    const chain: ImageInfo[] = await info(image, { backingChain: true });
    const top = chain[0]!;
    $('info').textContent = formatImageInfo(top);
    $('info-json').textContent = JSON.stringify(top, (_, v: unknown) => (typeof v === 'bigint' ? Number(v) : v), 4);
    $('snapshots').textContent = top.snapshots === undefined ? 'No snapshots.' : formatSnapshotList(top.snapshots);
    $('chain').append(chainList(chainTree(chain)!));
    $('view').hidden = false;
    setStatus(`mapping ${name}…`);
    drawMap(await allocationMap(image));
    await showHex();
    setStatus(`${name}: ${image.virtualSize} bytes, read in this page only`);
    document.body.dataset.state = 'ready';
  } catch (error) {
    showError(error, name);
    setStatus('');
    document.body.dataset.state = 'error';
  }
}

const baseName = (name: string): string => name.slice(name.lastIndexOf('/') + 1);

/** The top among the picked files: the image no other picked image names as its backing file. */
async function topImage(files: File[], host: ReturnType<typeof browserHost>): Promise<File> {
  const named = new Set<string>();
  for (const file of files) {
    try {
      const image = await open(file.name, { host, backing: false });
      if (image.backingFile !== undefined) named.add(baseName(image.backingFile));
      await image.close();
    } catch {
      // Not an image this page can open: it cannot be the top either way; the error shows if it is picked.
    }
  }
  return files.find((file) => !named.has(file.name)) ?? files[0]!;
}

function start(): void {
  const wasm = zstdWasm();
  const picker = $('files') as HTMLInputElement;
  picker.addEventListener('change', () => {
    const files = Array.from(picker.files ?? []);
    if (files.length === 0) return;
    const chosen = ($('top') as HTMLInputElement).value.trim();
    const host = browserHost({ files: files as NamedBlob[], zstdWasm: wasm });
    void (async () => {
      const top = files.find((f) => f.name === chosen) ?? (files.length === 1 ? files[0]! : await topImage(files, host));
      await inspect(top.name, host);
    })();
  });
  $('hex-go').addEventListener('click', () => void showHex());
  ($('hex-offset') as HTMLInputElement).addEventListener('keydown', (event) => {
    if (event.key === 'Enter') void showHex();
  });
  const url = new URLSearchParams(location.search).get('url');
  if (url !== null && url !== '') void inspect(url, browserHost({ zstdWasm: wasm }));
  document.body.dataset.state = url ? 'loading' : 'idle';
}

start();
