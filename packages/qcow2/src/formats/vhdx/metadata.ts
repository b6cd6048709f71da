import { Qcow2Error } from '../../errors.js';
import { decodeStruct, encodeStruct, readU64le, viewOf, writeU64le, type StructSpec } from '../../format/struct.js';
import { FILE_PARAMETERS, guidEquals, LOGICAL_SECTOR_SIZE, PAGE_83_DATA, PARENT_LOCATOR, PHYSICAL_SECTOR_SIZE, VIRTUAL_DISK_SIZE } from './guid.js';
import { KiB, MiB } from './header-section.js';

/**
 * The metadata region (VHDX 1.0 §3.5): a table of items (64 KiB at the region's start) and the items after it.
 * Five items are required: file parameters (block size, "leave blocks allocated" = fixed, "has parent" =
 * differencing), virtual disk size, page 83 data (a SCSI id), logical and physical sector sizes.
 */
export const METADATA_TABLE_SIZE = 64 * KiB;
const METADATA_SIGNATURE = 'metadata';
const ENTRY_SIZE = 32;
const MAX_ENTRIES = 2047;

export const MetadataFlag = { User: 1, VirtualDisk: 2, Required: 4 } as const;
export const FileParameterFlag = { LeaveBlocksAllocated: 1, HasParent: 2 } as const;

export const MIN_BLOCK_SIZE = MiB;
export const MAX_BLOCK_SIZE = 256 * MiB;

const entryLayout = {
  offset: { type: 'u32le', offset: 16 },
  length: { type: 'u32le', offset: 20 },
  dataBits: { type: 'u32le', offset: 24 },
} as const satisfies StructSpec<string>;

/** The VHDX metadata items qemu and qcowkit read (the page 83 data and parent locator are only checked). */
export interface VhdxMetadata {
  /** Bytes of guest data per BAT entry: a power of two, 1–256 MiB. */
  blockSize: number;
  /** File parameter bits (fixed, differencing). */
  fileParameterBits: number;
  /** Guest size in bytes. */
  virtualDiskSize: number;
  /** 512 or 4096. */
  logicalSectorSize: number;
  /** 512 or 4096. */
  physicalSectorSize: number;
}

const KNOWN = [FILE_PARAMETERS, VIRTUAL_DISK_SIZE, PAGE_83_DATA, LOGICAL_SECTOR_SIZE, PHYSICAL_SECTOR_SIZE, PARENT_LOCATOR];

const isPowerOfTwo = (n: number): boolean => n > 0 && (n & (n - 1)) === 0;

/**
 * Decodes the metadata of a region (`region` holds the whole region, as read from the file), with qemu's
 * checks: the table's signature, no item twice, every required item known, all five present, a block size of
 * 1–256 MiB, sectors of 512 or 4096 bytes. Items must lie inside the region (qemu reads them wherever they point).
 */
export function decodeMetadata(region: Uint8Array): VhdxMetadata {
  if (region.length < METADATA_TABLE_SIZE) throw new Qcow2Error('TRUNCATED', 'VHDX metadata table lies past the end of the file');
  if (new TextDecoder('latin1').decode(region.subarray(0, 8)) !== METADATA_SIGNATURE) throw new Qcow2Error('BAD_HEADER', 'VHDX metadata table signature is wrong');
  const count = viewOf(region).getUint16(10, true);
  if (count > MAX_ENTRIES) throw new Qcow2Error('BAD_HEADER', `VHDX metadata table has ${count} entries`);
  const items = new Map<number, Uint8Array>();
  for (let i = 0; i < count; i++) {
    const at = ENTRY_SIZE + i * ENTRY_SIZE;
    const id = region.subarray(at, at + 16);
    const entry = decodeStruct(entryLayout, region.subarray(at, at + ENTRY_SIZE), 'VHDX metadata entry');
    const known = KNOWN.findIndex((g) => guidEquals(g, id));
    if (known < 0) {
      if ((entry.dataBits & MetadataFlag.Required) !== 0) throw new Qcow2Error('UNSUPPORTED_FEATURE', 'VHDX metadata has a required item this reader does not know');
      continue;
    }
    if (items.has(known)) throw new Qcow2Error('BAD_HEADER', 'VHDX metadata has an item twice');
    if (entry.offset + entry.length > region.length) throw new Qcow2Error('BAD_HEADER', 'VHDX metadata item lies outside the metadata region');
    items.set(known, region.subarray(entry.offset, entry.offset + entry.length));
  }
  const item = (index: number, minLength: number): DataView => {
    const bytes = items.get(index);
    if (bytes === undefined) throw new Qcow2Error('UNSUPPORTED_FEATURE', 'VHDX metadata lacks a required item');
    if (bytes.length < minLength) throw new Qcow2Error('BAD_HEADER', 'VHDX metadata item too short');
    return viewOf(bytes);
  };
  const parameters = item(0, 8);
  const metadata: VhdxMetadata = {
    blockSize: parameters.getUint32(0, true),
    fileParameterBits: parameters.getUint32(4, true),
    virtualDiskSize: readU64le(item(1, 8), 0, 'VHDX virtual disk size'),
    logicalSectorSize: item(3, 4).getUint32(0, true),
    physicalSectorSize: item(4, 4).getUint32(0, true),
  };
  item(2, 16);
  if ((metadata.fileParameterBits & FileParameterFlag.HasParent) !== 0) {
    throw new Qcow2Error('UNSUPPORTED_FEATURE', items.has(5) ? 'differencing VHDX images (with a parent) are not supported' : 'VHDX says it has a parent but names none');
  }
  if (metadata.blockSize < MIN_BLOCK_SIZE || metadata.blockSize > MAX_BLOCK_SIZE || !isPowerOfTwo(metadata.blockSize)) {
    throw new Qcow2Error('BAD_HEADER', `VHDX block size ${metadata.blockSize} is invalid`);
  }
  if (metadata.logicalSectorSize !== 512 && metadata.logicalSectorSize !== 4096) {
    throw new Qcow2Error('BAD_HEADER', `VHDX logical sector size ${metadata.logicalSectorSize} is invalid`);
  }
  return metadata;
}

/**
 * The metadata region's first bytes as qemu writes them: the table with the five items (flags as qemu sets
 * them), then the items from 64 KiB on.
 */
export function encodeMetadata(metadata: VhdxMetadata, page83: Uint8Array): Uint8Array {
  const items: Array<{ id: Uint8Array; bytes: Uint8Array; flags: number }> = [];
  const u32 = (value: number): Uint8Array => {
    const bytes = new Uint8Array(4);
    viewOf(bytes).setUint32(0, value, true);
    return bytes;
  };
  const parameters = new Uint8Array(8);
  viewOf(parameters).setUint32(0, metadata.blockSize, true);
  viewOf(parameters).setUint32(4, metadata.fileParameterBits, true);
  const size = new Uint8Array(8);
  writeU64le(viewOf(size), 0, metadata.virtualDiskSize);
  const disk = MetadataFlag.Required | MetadataFlag.VirtualDisk;
  items.push({ id: FILE_PARAMETERS, bytes: parameters, flags: MetadataFlag.Required });
  items.push({ id: VIRTUAL_DISK_SIZE, bytes: size, flags: disk });
  items.push({ id: PAGE_83_DATA, bytes: page83, flags: disk });
  items.push({ id: LOGICAL_SECTOR_SIZE, bytes: u32(metadata.logicalSectorSize), flags: disk });
  items.push({ id: PHYSICAL_SECTOR_SIZE, bytes: u32(metadata.physicalSectorSize), flags: disk });
  const total = items.reduce((n, item) => n + item.bytes.length, 0);
  const out = new Uint8Array(METADATA_TABLE_SIZE + total);
  for (let i = 0; i < 8; i++) out[i] = METADATA_SIGNATURE.charCodeAt(i);
  viewOf(out).setUint16(10, items.length, true);
  let offset = METADATA_TABLE_SIZE;
  items.forEach((item, i) => {
    const at = ENTRY_SIZE + i * ENTRY_SIZE;
    out.set(item.id, at);
    encodeStruct(entryLayout, { offset, length: item.bytes.length, dataBits: item.flags }, out.subarray(at, at + ENTRY_SIZE));
    out.set(item.bytes, offset);
    offset += item.bytes.length;
  });
  return out;
}
