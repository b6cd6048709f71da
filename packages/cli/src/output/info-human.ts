import type { ImageInfo, SnapshotInfo } from '@qcowkit/qcow2/engine';
import { sizeToStr } from './human-size.js';

/**
 * qemu-img's human output for `info` and `snapshot -l` (block/qapi.c: bdrv_image_info_dump,
 * bdrv_snapshot_dump, dump_qobject), byte for byte. printf's field widths count bytes, so padding here
 * counts UTF-8 bytes too.
 */

const textEncoder = new TextEncoder();

function byteLength(text: string): number {
  return textEncoder.encode(text).length;
}

/** printf("%-Ns"). */
function left(text: string, width: number): string {
  return text + ' '.repeat(Math.max(0, width - byteLength(text)));
}

/** printf("%Ns"). */
function right(text: string, width: number): string {
  return ' '.repeat(Math.max(0, width - byteLength(text))) + text;
}

function two(n: number): string {
  return String(n).padStart(2, '0');
}

/** g_date_time_format(g_date_time_new_from_unix_local(sec), "%Y-%m-%d %H:%M:%S"): local time, as qemu. */
function localDate(sec: number): string {
  const date = new Date(sec * 1000);
  return `${date.getFullYear()}-${two(date.getMonth() + 1)}-${two(date.getDate())} ${two(date.getHours())}:${two(date.getMinutes())}:${two(date.getSeconds())}`;
}

/** "%02d:%02d:%02d.%03d" of the VM clock: hours are not wrapped at 24 (nor at 100). */
function vmClock(sec: number, nsec: number): string {
  const total = BigInt(sec) * 1_000_000_000n + BigInt(nsec);
  const secs = total / 1_000_000_000n;
  const ms = (total / 1_000_000n) % 1000n;
  return `${two(Number(secs / 3600n))}:${two(Number((secs / 60n) % 60n))}:${two(Number(secs % 60n))}.${String(ms).padStart(3, '0')}`;
}

/** The table header line (without its newline). */
export function snapshotTableHeader(): string {
  return `${left('ID', 10)}${left('TAG', 17)}${right('VM SIZE', 8)}${right('DATE', 20)}${right('VM CLOCK', 13)}${right('ICOUNT', 11)}`;
}

/** One snapshot's line (without its newline). Without an icount the ICOUNT column stays blank (11 spaces). */
export function snapshotTableRow(snapshot: SnapshotInfo): string {
  const icount = snapshot.icount === undefined ? '' : String(snapshot.icount);
  return (
    `${left(snapshot.id, 9)} ${left(snapshot.name, 16)} ${right(sizeToStr(snapshot['vm-state-size']), 8)}` +
    `${right(localDate(snapshot['date-sec']), 20)}${right(vmClock(snapshot['vm-clock-sec'], snapshot['vm-clock-nsec']), 13)}${right(icount, 11)}`
  );
}

/** "Snapshot list:", the header and one line per snapshot, as `qemu-img snapshot -l` and `info` print it. */
export function formatSnapshotList(snapshots: SnapshotInfo[]): string {
  return `Snapshot list:\n${snapshotTableHeader()}\n${snapshots.map((s) => `${snapshotTableRow(s)}\n`).join('')}`;
}

function isComposite(value: unknown): value is object {
  return typeof value === 'object' && value !== null;
}

function scalar(value: unknown): string {
  if (typeof value === 'boolean') return value ? 'true' : 'false';
  return String(value);
}

/** qemu's dump_qobject: dicts as "key: value" with dashes in keys shown as spaces, lists as "[i]: value". */
function dumpValue(value: unknown, indentation: number): string {
  if (Array.isArray(value)) return dumpList(value, indentation);
  if (isComposite(value)) return dumpDict(value, indentation);
  return scalar(value);
}

function dumpList(list: unknown[], indentation: number): string {
  return list
    .map((item, i) => {
      const composite = isComposite(item);
      return `${' '.repeat(indentation * 4)}[${i}]:${composite ? '\n' : ' '}${dumpValue(item, indentation + 1)}${composite ? '' : '\n'}`;
    })
    .join('');
}

function dumpDict(dict: object, indentation: number): string {
  return Object.entries(dict)
    .filter(([, value]) => value !== undefined)
    .map(([key, value]) => {
      const composite = isComposite(value);
      return `${' '.repeat(indentation * 4)}${key.replaceAll('-', ' ')}:${composite ? '\n' : ' '}${dumpValue(value, indentation + 1)}${composite ? '' : '\n'}`;
    })
    .join('');
}

/** `qemu-img info` human output of one image, every line ending in a newline. */
export function formatImageInfo(info: ImageInfo): string {
  const lines: string[] = [
    `image: ${info.filename}`,
    `file format: ${info.format}`,
    `virtual size: ${sizeToStr(info['virtual-size'])} (${info['virtual-size']} bytes)`,
    `disk size: ${info['actual-size'] === undefined ? 'unavailable' : sizeToStr(info['actual-size'])}`,
  ];
  if (info['cluster-size'] !== undefined) lines.push(`cluster_size: ${info['cluster-size']}`);
  if (info['dirty-flag']) lines.push('cleanly shut down: no');
  let out = lines.map((line) => `${line}\n`).join('');
  const backing = info['backing-filename'];
  if (backing !== undefined) {
    const full = info['full-backing-filename'];
    const actual = full === undefined ? ' (cannot determine actual path)' : full !== backing ? ` (actual path: ${full})` : '';
    out += `backing file: ${backing}${actual}\n`;
    if (info['backing-filename-format'] !== undefined) out += `backing file format: ${info['backing-filename-format']}\n`;
  }
  if (info.snapshots !== undefined) out += formatSnapshotList(info.snapshots);
  if (info['format-specific'] !== undefined) {
    out += `Format specific information:\n${dumpValue(info['format-specific'].data, 1)}`;
  }
  return out;
}

/** `qemu-img info --backing-chain` human output: the images one after another, separated by an empty line. */
export function formatImageInfoList(infos: ImageInfo[]): string {
  return infos.map(formatImageInfo).join('\n');
}
