import { Qcow2Error } from '../errors.js';
import { MAX_SNAPSHOT_EXTRA_DATA } from './constants.js';
import { decodeStruct, encodeStruct, readU64, structSize, viewOf, writeU64, type StructSpec, type StructValue } from './struct.js';

/** Fixed part of one snapshot table entry; extra data, id and name follow, then padding to 8 bytes. */
const entryLayout = {
  l1TableOffset: { type: 'u64', offset: 0 },
  l1Size: { type: 'u32', offset: 8 },
  idSize: { type: 'u16', offset: 12 },
  nameSize: { type: 'u16', offset: 14 },
  dateSec: { type: 'u32', offset: 16 },
  dateNsec: { type: 'u32', offset: 20 },
  vmClockNsec: { type: 'u64', offset: 24 },
  vmStateSize: { type: 'u32', offset: 32 },
  extraDataSize: { type: 'u32', offset: 36 },
} as const satisfies StructSpec<string>;

export const SNAPSHOT_ENTRY_FIXED_BYTES = structSize(entryLayout);
/** Extra data version 3 requires of every entry: vm_state_size_large and disk_size. */
export const V3_MIN_SNAPSHOT_EXTRA_DATA_BYTES = 16;

/** The fixed part of one entry, as stored. */
export type SnapshotEntryFixed = StructValue<keyof typeof entryLayout>;

/**
 * Decodes the fixed part of an entry from `bytes` (at least SNAPSHOT_ENTRY_FIXED_BYTES). `exact: false` reads a
 * u64 above 2^53 as the nearest number instead of refusing it (qemu-img check reports what follows from it).
 */
export function decodeSnapshotEntryFixed(bytes: Uint8Array, options: { exact?: boolean } = {}): SnapshotEntryFixed {
  return decodeStruct(entryLayout, bytes, 'snapshot table entry', options);
}

/** Where the parts of the entry at `offset` lie: its extra data, id and name, its end, and the next entry (8-byte aligned). */
export function snapshotEntryParts(fixed: SnapshotEntryFixed, offset: number): { extraStart: number; idStart: number; nameStart: number; end: number; next: number } {
  const extraStart = offset + SNAPSHOT_ENTRY_FIXED_BYTES;
  const idStart = extraStart + fixed.extraDataSize;
  const nameStart = idStart + fixed.idSize;
  const end = nameStart + fixed.nameSize;
  return { extraStart, idStart, nameStart, end, next: offset + align8(end - offset) };
}
/** Extra data qemu (since 5.2 with icount, 16 bytes before) writes: vm_state_size_large, disk_size, icount. */
export const SNAPSHOT_EXTRA_DATA_BYTES = 24;

/** One internal snapshot as the snapshot table stores it (its L1 table, id, name, dates, VM state size, extra data). */
export interface SnapshotEntry {
  l1TableOffset: number;
  l1Size: number;
  id: string;
  name: string;
  dateSec: number;
  dateNsec: number;
  vmClockNsec: number;
  /** The VM state size: the 64-bit extra field when present, else the 32-bit one. */
  vmStateSize: number;
  /** The 32-bit vm_state_size field as stored (qemu writes 0 there when the state is >= 4 GiB). */
  vmStateSize32: number;
  /** Virtual disk size when the snapshot was taken (extra data), if stored. */
  diskSize: number | undefined;
  /** Instruction count, or undefined when icount was off (-1) or not stored. */
  icount: bigint | undefined;
  /** The whole extra data as stored, including bytes this engine does not understand, kept byte for byte. */
  extraData: Uint8Array;
}

const textDecoder = new TextDecoder();
const textEncoder = new TextEncoder();

function align8(n: number): number {
  return (n + 7) & ~7;
}

/**
 * Decodes the entry at `offset` in `bytes`. Returns the entry and the offset of the next one, or the number of
 * bytes needed when `bytes` ends too early (the caller reads more and tries again).
 */
export function decodeSnapshotEntry(
  bytes: Uint8Array,
  offset: number,
): { entry: SnapshotEntry; next: number } | { needed: number } {
  if (bytes.length < offset + SNAPSHOT_ENTRY_FIXED_BYTES) return { needed: offset + SNAPSHOT_ENTRY_FIXED_BYTES };
  const fixed = decodeSnapshotEntryFixed(bytes.subarray(offset, offset + SNAPSHOT_ENTRY_FIXED_BYTES));
  if (fixed.extraDataSize > MAX_SNAPSHOT_EXTRA_DATA) {
    throw new Qcow2Error('BAD_SNAPSHOT_TABLE', `snapshot extra data too large (${fixed.extraDataSize} bytes, max ${MAX_SNAPSHOT_EXTRA_DATA})`);
  }
  const { extraStart, idStart, nameStart, end, next } = snapshotEntryParts(fixed, offset);
  if (bytes.length < end) return { needed: next };

  const extraData = bytes.slice(extraStart, idStart);
  const extraView = viewOf(extraData);
  let vmStateSize = fixed.vmStateSize;
  let diskSize: number | undefined;
  let icount: bigint | undefined;
  if (extraData.length >= 8) vmStateSize = readU64(extraView, 0, 'snapshot vm state size');
  if (extraData.length >= 16) diskSize = readU64(extraView, 8, 'snapshot disk size');
  if (extraData.length >= 24) {
    const raw = extraView.getBigUint64(16);
    icount = raw === 0xffffffffffffffffn ? undefined : raw;
  }
  return {
    entry: {
      l1TableOffset: fixed.l1TableOffset,
      l1Size: fixed.l1Size,
      id: textDecoder.decode(bytes.subarray(idStart, nameStart)),
      name: textDecoder.decode(bytes.subarray(nameStart, end)),
      dateSec: fixed.dateSec,
      dateNsec: fixed.dateNsec,
      vmClockNsec: fixed.vmClockNsec,
      vmStateSize,
      vmStateSize32: fixed.vmStateSize,
      diskSize,
      icount,
      extraData,
    },
    next,
  };
}

/** Encoded size of one entry, padding included. */
export function snapshotEntrySize(entry: SnapshotEntry): number {
  return align8(SNAPSHOT_ENTRY_FIXED_BYTES + entry.extraData.length + textEncoder.encode(entry.id).length + textEncoder.encode(entry.name).length);
}

/**
 * Encodes a table. The known extra-data fields are written over the kept extra bytes so a changed entry stays
 * consistent while unknown trailing bytes survive.
 */
export function encodeSnapshotTable(entries: SnapshotEntry[]): Uint8Array {
  const total = entries.reduce((sum, e) => sum + snapshotEntrySize(e), 0);
  const out = new Uint8Array(total);
  let offset = 0;
  for (const entry of entries) {
    const id = textEncoder.encode(entry.id);
    const name = textEncoder.encode(entry.name);
    const extra = entry.extraData.slice();
    const extraView = viewOf(extra);
    if (extra.length >= 8) writeU64(extraView, 0, entry.vmStateSize);
    if (extra.length >= 16 && entry.diskSize !== undefined) writeU64(extraView, 8, entry.diskSize);
    if (extra.length >= 24) extraView.setBigUint64(16, entry.icount ?? 0xffffffffffffffffn);
    encodeStruct(
      entryLayout,
      {
        l1TableOffset: entry.l1TableOffset,
        l1Size: entry.l1Size,
        idSize: id.length,
        nameSize: name.length,
        dateSec: entry.dateSec,
        dateNsec: entry.dateNsec,
        vmClockNsec: entry.vmClockNsec,
        vmStateSize: entry.vmStateSize32,
        extraDataSize: extra.length,
      },
      out.subarray(offset),
    );
    let p = offset + SNAPSHOT_ENTRY_FIXED_BYTES;
    out.set(extra, p);
    p += extra.length;
    out.set(id, p);
    p += id.length;
    out.set(name, p);
    offset += snapshotEntrySize(entry);
  }
  return out;
}
