import { crc32c } from '../formats/vhdx/crc32c.js';
import { decodeHeader, encodeHeader, HEADER_OFFSETS, HEADER_SIZE } from '../formats/vhdx/header-section.js';
import { LOG_SECTOR } from '../formats/vhdx/log.js';

/**
 * Builds VHDX log entries for tests (qemu gives no way to leave a log behind: it replays each entry as soon as
 * it has written it). An entry is what the specification describes: a header, descriptors, data sectors, one
 * CRC-32C over all of it. qemu-img must find the same entries valid as the reader does, which the interop
 * test checks.
 */
export interface LogEntryOptions {
  logGuid: Uint8Array;
  sequence: number;
  /** Whole sectors to write: 4 KiB each, at 4 KiB-aligned file offsets. */
  writes: Array<{ fileOffset: number; sector: Uint8Array }>;
  zeros?: Array<{ fileOffset: number; length: number }>;
  flushedFileOffset: number;
  lastFileOffset: number;
}

function u64(view: DataView, at: number, value: number): void {
  view.setUint32(at, value >>> 0, true);
  view.setUint32(at + 4, Math.floor(value / 0x100000000), true);
}

export function logEntry(options: LogEntryOptions): Uint8Array {
  const zeros = options.zeros ?? [];
  const count = options.writes.length + zeros.length;
  const descSectors = Math.ceil((count + 2) / 128);
  const entry = new Uint8Array((descSectors + options.writes.length) * LOG_SECTOR);
  const view = new DataView(entry.buffer);
  view.setUint32(0, 0x65676f6c, true); // "loge"
  view.setUint32(8, entry.length, true);
  u64(view, 16, options.sequence);
  view.setUint32(24, count, true);
  entry.set(options.logGuid, 32);
  u64(view, 48, options.flushedFileOffset);
  u64(view, 56, options.lastFileOffset);
  let desc = 64;
  options.writes.forEach((write, i) => {
    view.setUint32(desc, 0x63736564, true); // "desc"
    entry.set(write.sector.subarray(4092, 4096), desc + 4);
    entry.set(write.sector.subarray(0, 8), desc + 8);
    u64(view, desc + 16, write.fileOffset);
    u64(view, desc + 24, options.sequence);
    desc += 32;
    const data = (descSectors + i) * LOG_SECTOR;
    view.setUint32(data, 0x61746164, true); // "data"
    view.setUint32(data + 4, Math.floor(options.sequence / 0x100000000), true);
    entry.set(write.sector.subarray(8, 4092), data + 8);
    view.setUint32(data + 4092, options.sequence >>> 0, true);
  });
  for (const zero of zeros) {
    view.setUint32(desc, 0x6f72657a, true); // "zero"
    u64(view, desc + 8, zero.length);
    u64(view, desc + 16, zero.fileOffset);
    u64(view, desc + 24, options.sequence);
    desc += 32;
  }
  view.setUint32(4, crc32c(entry, 4), true);
  return entry;
}

/** The image with `entry` at the start of its log and both headers naming `logGuid` (checksums redone). */
export function withLog(image: Uint8Array, logGuid: Uint8Array, entry: Uint8Array): Uint8Array {
  const out = image.slice();
  for (const offset of HEADER_OFFSETS) {
    const header = decodeHeader(out.subarray(offset, offset + HEADER_SIZE));
    if (header === undefined) throw new Error('withLog: invalid header');
    out.set(entry, header.logOffset);
    out.set(encodeHeader({ ...header, logGuid }), offset);
  }
  return out;
}
