/** Image helpers for the snapshot tests: qemu-img and qemu-io with argument arrays, failing loudly. */
import { spawnSync } from 'node:child_process';

export const MiB = 1024 * 1024;

export function run(program: string, args: readonly string[]): string {
  const r = spawnSync(program, [...args], { encoding: 'utf8', maxBuffer: 256 * MiB });
  if (r.error) throw r.error;
  if (r.status !== 0) throw new Error(`${program} ${args.join(' ')} failed (${r.status ?? r.signal}): ${r.stderr.trim() || r.stdout.trim()}`);
  return r.stdout;
}

export function qemuImg(...args: string[]): string {
  return run('qemu-img', args);
}

/** Runs qemu-io commands on an image chain; -U so it works while QEMU holds its locks. Throws on any failure. */
export function qemuIo(path: string, commands: readonly string[], options: { readOnly?: boolean; format?: string } = {}): string {
  const out = run('qemu-io', [...(options.readOnly ? ['-r', '-U'] : []), '-f', options.format ?? 'qcow2', ...commands.flatMap((c) => ['-c', c]), path]);
  if (/Pattern verification failed|failed:|error/i.test(out)) throw new Error(`qemu-io on ${path}: ${out.trim()}`);
  return out;
}

/** A region written with one byte pattern. */
export interface Region {
  offset: number;
  length: number;
  pattern: number;
}

/** Makes `top` (qcow2) over `base` (qcow2): base holds `baseRegions`, top `topRegions`. */
export function makeChain(base: string, top: string, size: number, baseRegions: readonly Region[], topRegions: readonly Region[]): void {
  qemuImg('create', '-q', '-f', 'qcow2', base, String(size));
  if (baseRegions.length > 0) qemuIo(base, baseRegions.map((r) => `write -q -P ${r.pattern} ${r.offset} ${r.length}`));
  qemuImg('create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', top);
  if (topRegions.length > 0) qemuIo(top, topRegions.map((r) => `write -q -P ${r.pattern} ${r.offset} ${r.length}`));
}

/** The guest view of `regions` written in order over zeros, as a raw file's bytes. */
export function expectedContent(size: number, regions: readonly Region[]): Buffer {
  const buffer = Buffer.alloc(size);
  for (const r of regions) buffer.fill(r.pattern, r.offset, r.offset + r.length);
  return buffer;
}

/** The regions a reader sees after `regions` were written in order (later writes win), zeros included. */
export function visibleRegions(size: number, regions: readonly Region[]): Region[] {
  const content = expectedContent(size, regions);
  const out: Region[] = [];
  let start = 0;
  for (let i = 1; i <= size; i++) {
    if (i === size || content[i] !== content[start]) {
      out.push({ offset: start, length: i - start, pattern: content[start]! });
      start = i;
    }
  }
  return out;
}

/** `qemu-io read -P` for each region: throws if any byte differs. */
export function verifyRegions(path: string, regions: readonly Region[], format = 'qcow2'): void {
  if (regions.length === 0) return;
  for (let i = 0; i < regions.length; i += 200) {
    qemuIo(
      path,
      regions.slice(i, i + 200).map((r) => `read -q -P ${r.pattern} ${r.offset} ${r.length}`),
      { readOnly: true, format },
    );
  }
}

/** Whether qemu-img compare finds two images (any formats, with their chains) identical. */
export function compareImages(a: string, b: string, formats?: [string, string]): { identical: boolean; output: string } {
  const r = spawnSync('qemu-img', ['compare', '-U', ...(formats ? ['-f', formats[0], '-F', formats[1]] : []), a, b], { encoding: 'utf8' });
  return { identical: r.status === 0, output: `${r.stdout}${r.stderr}`.trim() };
}

export interface QemuImgInfo {
  'virtual-size': number;
  format: string;
  'backing-filename'?: string;
  'full-backing-filename'?: string;
}

export function imageInfo(path: string): QemuImgInfo {
  return JSON.parse(qemuImg('info', '-U', '--output=json', path)) as QemuImgInfo;
}

/** qemu-img check: throws when it finds anything. */
export function checkImage(path: string): void {
  qemuImg('check', '-U', '-q', path);
}
