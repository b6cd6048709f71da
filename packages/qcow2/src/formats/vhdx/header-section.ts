import { Qcow2Error } from '../../errors.js';
import { decodeStruct, encodeStruct, viewOf, type StructSpec } from '../../format/struct.js';
import { crc32c } from './crc32c.js';

/**
 * The VHDX header section (VHDX Format Specification 1.0, §2.2): the first MiB of the file, in 64 KiB pieces —
 * the file identifier ("vhdxfile" and a creator string), two headers (the one with the higher sequence number is
 * current), and two copies of the region table (where the BAT and the metadata region are). Little-endian;
 * headers and region tables carry a CRC-32C over 4 KiB and 64 KiB, their checksum field counted as zeros.
 */
export const KiB = 1024;
export const MiB = 1024 * KiB;
export const FILE_IDENTIFIER_OFFSET = 0;
export const HEADER_OFFSETS = [64 * KiB, 128 * KiB] as const;
export const REGION_TABLE_OFFSETS = [192 * KiB, 256 * KiB] as const;
export const HEADER_SECTION_SIZE = MiB;
export const HEADER_SIZE = 4 * KiB;
export const REGION_TABLE_SIZE = 64 * KiB;
export const VHDX_SIGNATURE = 'vhdxfile';

const HEADER_SIGNATURE = 0x64616568; // "head"
const REGION_SIGNATURE = 0x69676572; // "regi"
/** A region the reader must understand to open the file. */
export const REGION_REQUIRED = 1;
/** The specification's limit on region table entries. */
const MAX_REGIONS = 2047;

export function hasVhdxSignature(bytes: Uint8Array): boolean {
  return bytes.length >= 8 && new TextDecoder('latin1').decode(bytes.subarray(0, 8)) === VHDX_SIGNATURE;
}

/** The file identifier block: the signature and a UTF-16LE creator string (diagnostic only). */
export function encodeFileIdentifier(creator: string, withSignature: boolean): Uint8Array {
  const bytes = new Uint8Array(8 + 512);
  if (withSignature) for (let i = 0; i < 8; i++) bytes[i] = VHDX_SIGNATURE.charCodeAt(i);
  const view = viewOf(bytes);
  for (let i = 0; i < Math.min(creator.length, 255); i++) view.setUint16(8 + i * 2, creator.charCodeAt(i), true);
  return bytes;
}

const headerLayout = {
  signature: { type: 'u32le', offset: 0 },
  checksum: { type: 'u32le', offset: 4 },
  sequenceNumber: { type: 'u64le', offset: 8 },
  logVersion: { type: 'u16le', offset: 64 },
  version: { type: 'u16le', offset: 66 },
  logLength: { type: 'u32le', offset: 68 },
  logOffset: { type: 'u64le', offset: 72 },
} as const satisfies StructSpec<string>;

/** A VHDX header (one of the two copies at 64 and 128 KiB; the valid one with the higher sequence number is current). */
export interface VhdxHeader {
  /** Which copy is current: the valid header with the higher number. */
  sequenceNumber: number;
  /** Changed on the first write of each open for writing. */
  fileWriteGuid: Uint8Array;
  /** Changed on the first write of guest data of each open. */
  dataWriteGuid: Uint8Array;
  /** All zeros: no log to replay. */
  logGuid: Uint8Array;
  /** 0, the only log version. */
  logVersion: number;
  /** 1, the only header version. */
  version: number;
  /** Bytes of the log, a multiple of 1 MiB. */
  logLength: number;
  /** Where the log lies in the file, 1 MiB aligned. */
  logOffset: number;
}

/** A header if its signature, version and checksum are right (qemu ignores an invalid one), else undefined. */
export function decodeHeader(bytes: Uint8Array): VhdxHeader | undefined {
  if (bytes.length < HEADER_SIZE) return undefined;
  const block = bytes.subarray(0, HEADER_SIZE);
  const fields = decodeStruct(headerLayout, block, 'VHDX header');
  if (fields.signature !== HEADER_SIGNATURE || fields.version !== 1 || crc32c(block, 4) !== fields.checksum) return undefined;
  return {
    sequenceNumber: fields.sequenceNumber,
    fileWriteGuid: block.slice(16, 32),
    dataWriteGuid: block.slice(32, 48),
    logGuid: block.slice(48, 64),
    logVersion: fields.logVersion,
    version: fields.version,
    logLength: fields.logLength,
    logOffset: fields.logOffset,
  };
}

/** One 4 KiB header block with its checksum. */
export function encodeHeader(header: VhdxHeader): Uint8Array {
  const bytes = new Uint8Array(HEADER_SIZE);
  const { sequenceNumber, logVersion, version, logLength, logOffset } = header;
  encodeStruct(headerLayout, { signature: HEADER_SIGNATURE, checksum: 0, sequenceNumber, logVersion, version, logLength, logOffset }, bytes);
  bytes.set(header.fileWriteGuid, 16);
  bytes.set(header.dataWriteGuid, 32);
  bytes.set(header.logGuid, 48);
  viewOf(bytes).setUint32(4, crc32c(bytes, 4), true);
  return bytes;
}

/**
 * The current header, as qemu chooses it: the only valid one, or of two valid ones the higher sequence number;
 * two valid headers with the same number must be identical (Disk2VHD writes them so).
 */
export function currentHeader(first: VhdxHeader | undefined, second: VhdxHeader | undefined, rawFirst: Uint8Array, rawSecond: Uint8Array): VhdxHeader {
  if (first === undefined && second === undefined) throw new Qcow2Error('BAD_HEADER', 'No valid VHDX header found');
  if (first === undefined) return second!;
  if (second === undefined) return first;
  if (first.sequenceNumber > second.sequenceNumber) return first;
  if (second.sequenceNumber > first.sequenceNumber) return second;
  const same = rawFirst.subarray(0, 80).every((b, i) => b === rawSecond[i]);
  if (!same) throw new Qcow2Error('BAD_HEADER', 'No valid VHDX header found (two different headers with the same sequence number)');
  return first;
}

export interface RegionEntry {
  guid: Uint8Array;
  fileOffset: number;
  length: number;
  required: boolean;
}

const regionHeaderLayout = {
  signature: { type: 'u32le', offset: 0 },
  checksum: { type: 'u32le', offset: 4 },
  entryCount: { type: 'u32le', offset: 8 },
} as const satisfies StructSpec<string>;

const regionEntryLayout = {
  fileOffset: { type: 'u64le', offset: 16 },
  length: { type: 'u32le', offset: 24 },
  dataBits: { type: 'u32le', offset: 28 },
} as const satisfies StructSpec<string>;

const REGION_ENTRY_SIZE = 32;

/** Decodes a region table (64 KiB), checking its checksum, signature and entry count as qemu does. */
export function decodeRegionTable(bytes: Uint8Array): RegionEntry[] {
  if (bytes.length < REGION_TABLE_SIZE) throw new Qcow2Error('TRUNCATED', 'VHDX region table lies past the end of the file');
  const block = bytes.subarray(0, REGION_TABLE_SIZE);
  const header = decodeStruct(regionHeaderLayout, block, 'VHDX region table');
  if (crc32c(block, 4) !== header.checksum) throw new Qcow2Error('BAD_CHECKSUM', 'VHDX region table checksum is wrong');
  if (header.signature !== REGION_SIGNATURE) throw new Qcow2Error('BAD_HEADER', 'VHDX region table signature is wrong');
  if (header.entryCount > MAX_REGIONS) throw new Qcow2Error('BAD_HEADER', `VHDX region table has ${header.entryCount} entries (at most ${MAX_REGIONS})`);
  const entries: RegionEntry[] = [];
  for (let i = 0; i < header.entryCount; i++) {
    const at = 16 + i * REGION_ENTRY_SIZE;
    const entry = decodeStruct(regionEntryLayout, block.subarray(at, at + REGION_ENTRY_SIZE).slice(), 'VHDX region entry');
    entries.push({ guid: block.slice(at, at + 16), fileOffset: entry.fileOffset, length: entry.length, required: (entry.dataBits & REGION_REQUIRED) !== 0 });
  }
  return entries;
}

export function encodeRegionTable(entries: RegionEntry[]): Uint8Array {
  const bytes = new Uint8Array(REGION_TABLE_SIZE);
  encodeStruct(regionHeaderLayout, { signature: REGION_SIGNATURE, checksum: 0, entryCount: entries.length }, bytes);
  entries.forEach((entry, i) => {
    const at = 16 + i * REGION_ENTRY_SIZE;
    const slot = bytes.subarray(at, at + REGION_ENTRY_SIZE);
    slot.set(entry.guid, 0);
    encodeStruct(regionEntryLayout, { fileOffset: entry.fileOffset, length: entry.length, dataBits: entry.required ? REGION_REQUIRED : 0 }, slot);
  });
  viewOf(bytes).setUint32(4, crc32c(bytes, 4), true);
  return bytes;
}
