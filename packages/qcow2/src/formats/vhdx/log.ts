import { Qcow2Error } from '../../errors.js';
import { decodeStruct, viewOf, type StructSpec } from '../../format/struct.js';
import { crc32c } from './crc32c.js';
import { guidEquals } from './guid.js';

/**
 * The VHDX log (VHDX 1.0 §2.3): a circular buffer of 4 KiB sectors holding entries, each a header, descriptors
 * (a "desc" one per data sector to write, or a "zero" one for a run of zeros) and data sectors. Metadata
 * updates go through it so that a crash never leaves them half written; an image whose header names a log GUID
 * and whose log holds a valid sequence of entries must have the log replayed before it is read. This finds that
 * sequence the way qemu's vhdx_log_search does, and lists the writes replaying it makes.
 */
export const LOG_SECTOR = 4096;
const ENTRY_SIGNATURE = 0x65676f6c; // "loge"
const DESC_SIGNATURE = 0x63736564; // "desc"
const ZERO_SIGNATURE = 0x6f72657a; // "zero"
const DATA_SIGNATURE = 0x61746164; // "data"
const DESCRIPTOR_SIZE = 32;
const ENTRY_HEADER_SIZE = 64;

const entryLayout = {
  signature: { type: 'u32le', offset: 0 },
  checksum: { type: 'u32le', offset: 4 },
  entryLength: { type: 'u32le', offset: 8 },
  tail: { type: 'u32le', offset: 12 },
  sequenceNumber: { type: 'u64le', offset: 16 },
  descriptorCount: { type: 'u32le', offset: 24 },
  flushedFileOffset: { type: 'u64le', offset: 48 },
  lastFileOffset: { type: 'u64le', offset: 56 },
} as const satisfies StructSpec<string>;

/** One write that replaying the log makes: `bytes` at `fileOffset` (zeros for a "zero" descriptor). */
export interface LogWrite {
  fileOffset: number;
  /** The sector's bytes, or the length of a run of zeros. */
  data: Uint8Array | { zeros: number };
}

export interface LogSequence {
  /** Sequence number of the last entry. */
  lastSequence: number;
  writes: LogWrite[];
  /** The largest flushed_file_offset the entries require the file to reach (qemu refuses a shorter file). */
  flushedFileOffset: number;
  /** The file must be at least this long after the replay (rounded up to a MiB). */
  lastFileOffset: number;
}

/** Sectors the header and `count` descriptors take (126 fit in the first sector beside the header, 128 after). */
function descriptorSectors(count: number): number {
  return Math.ceil((count + 2) / 128);
}

interface ParsedEntry {
  sequenceNumber: number;
  sectors: number;
  writes: LogWrite[];
  flushedFileOffset: number;
  lastFileOffset: number;
}

/**
 * The entry at sector `at` of `log` (length a multiple of 4 KiB), if valid: a header for this log GUID, valid
 * descriptors, data sectors with matching sequence numbers, and a checksum over the whole entry. Entries wrap
 * around the end of the buffer. A header that is valid but whose descriptors are not is an error (qemu fails
 * the open), not just an invalid entry.
 */
function parseEntry(log: Uint8Array, at: number, logGuid: Uint8Array): ParsedEntry | undefined {
  const length = log.length;
  const sector = (i: number): Uint8Array => {
    const start = (at + i * LOG_SECTOR) % length;
    return log.subarray(start, start + LOG_SECTOR);
  };
  const first = sector(0);
  const header = decodeStruct(entryLayout, first, 'VHDX log entry');
  if (header.signature !== ENTRY_SIGNATURE || header.entryLength > length || header.entryLength % LOG_SECTOR !== 0 || header.entryLength === 0) return undefined;
  if (header.sequenceNumber === 0 || !guidEquals(first.subarray(32, 48), logGuid)) return undefined;
  if (header.descriptorCount * DESCRIPTOR_SIZE > header.entryLength) return undefined;
  const total = header.entryLength / LOG_SECTOR;
  const descSectors = descriptorSectors(header.descriptorCount);
  if (descSectors > total) return undefined;
  // The descriptors, in the sectors after the 64-byte header.
  const descBytes = new Uint8Array(descSectors * LOG_SECTOR);
  for (let i = 0; i < descSectors; i++) descBytes.set(sector(i), i * LOG_SECTOR);
  const writes: LogWrite[] = [];
  let dataSector = descSectors;
  const descriptors: Array<{ zero: boolean; fileOffset: number; zeroLength: number; leading: Uint8Array; trailing: Uint8Array }> = [];
  for (let i = 0; i < header.descriptorCount; i++) {
    const d = descBytes.subarray(ENTRY_HEADER_SIZE + i * DESCRIPTOR_SIZE, ENTRY_HEADER_SIZE + (i + 1) * DESCRIPTOR_SIZE);
    const view = viewOf(d);
    const signature = view.getUint32(0, true);
    const fileOffset = view.getUint32(16, true) + view.getUint32(20, true) * 0x100000000;
    const sequence = view.getUint32(24, true) + view.getUint32(28, true) * 0x100000000;
    const zeroLength = view.getUint32(8, true) + view.getUint32(12, true) * 0x100000000;
    const valid =
      sequence === header.sequenceNumber &&
      fileOffset % LOG_SECTOR === 0 &&
      (signature === DESC_SIGNATURE || (signature === ZERO_SIGNATURE && zeroLength % LOG_SECTOR === 0));
    if (!valid) throw new Qcow2Error('BAD_HEADER', 'VHDX log entry has an invalid descriptor');
    if (!Number.isSafeInteger(fileOffset) || !Number.isSafeInteger(zeroLength)) throw new Qcow2Error('OFFSET_TOO_LARGE', 'VHDX log descriptor offset is out of range');
    descriptors.push({ zero: signature === ZERO_SIGNATURE, fileOffset, zeroLength, leading: d.slice(8, 16), trailing: d.slice(4, 8) });
  }
  // The checksum covers the whole entry with its checksum field as zeros.
  const whole = new Uint8Array(header.entryLength);
  for (let i = 0; i < total; i++) whole.set(sector(i), i * LOG_SECTOR);
  if (crc32c(whole, 4) !== header.checksum) return undefined;
  for (const d of descriptors) {
    if (d.zero) {
      writes.push({ fileOffset: d.fileOffset, data: { zeros: d.zeroLength } });
      continue;
    }
    if (dataSector >= total) throw new Qcow2Error('BAD_HEADER', 'VHDX log entry has fewer data sectors than descriptors');
    const data = sector(dataSector++);
    const view = viewOf(data);
    const sequence = view.getUint32(4, true) * 0x100000000 + view.getUint32(4092, true);
    if (view.getUint32(0, true) !== DATA_SIGNATURE || sequence !== header.sequenceNumber) throw new Qcow2Error('BAD_HEADER', 'VHDX log data sector does not match its descriptor');
    // A data sector keeps 4084 of the 4096 bytes; the first 8 and last 4 are in its descriptor.
    const bytes = new Uint8Array(LOG_SECTOR);
    bytes.set(d.leading, 0);
    bytes.set(data.subarray(8, 4092), 8);
    bytes.set(d.trailing, 4092);
    writes.push({ fileOffset: d.fileOffset, data: bytes });
  }
  return { sequenceNumber: header.sequenceNumber, sectors: total, writes, flushedFileOffset: header.flushedFileOffset, lastFileOffset: header.lastFileOffset };
}

/**
 * The active sequence of the log, or undefined when there is none to replay: every sector is tried as the start
 * of a sequence of valid entries with consecutive sequence numbers; the sequence whose last entry has the highest
 * number wins.
 */
export function findLogSequence(log: Uint8Array, logGuid: Uint8Array): LogSequence | undefined {
  let best: LogSequence | undefined;
  for (let start = 0; start < log.length; ) {
    const first = parseEntry(log, start, logGuid);
    if (first === undefined) {
      start += LOG_SECTOR;
      continue;
    }
    const entries = [first];
    let at = (start + first.sectors * LOG_SECTOR) % log.length;
    let used = first.sectors;
    while (used < log.length / LOG_SECTOR) {
      const next = parseEntry(log, at, logGuid);
      if (next === undefined || next.sequenceNumber !== entries[entries.length - 1]!.sequenceNumber + 1) break;
      entries.push(next);
      at = (at + next.sectors * LOG_SECTOR) % log.length;
      used += next.sectors;
    }
    const last = entries[entries.length - 1]!;
    if (best === undefined || last.sequenceNumber > best.lastSequence) {
      best = {
        lastSequence: last.sequenceNumber,
        writes: entries.flatMap((e) => e.writes),
        flushedFileOffset: Math.max(...entries.map((e) => e.flushedFileOffset)),
        lastFileOffset: Math.max(...entries.map((e) => e.lastFileOffset)),
      };
    }
    // qemu's search goes on after the sequence it found, and stops once it has wrapped around the buffer.
    const next = start + used * LOG_SECTOR;
    if (next >= log.length) break;
    start = next;
  }
  return best;
}
