import type { BlockDevice, Extent } from '../device/block-device.js';
import { walkExtents } from './extent-walk.js';

/** One entry of `qemu-img map --output=json`, with qemu's field names. */
export interface MapEntry {
  start: number;
  length: number;
  depth: number;
  present: boolean;
  zero: boolean;
  data: boolean;
  offset?: number;
  /** Not printed in JSON by qemu-img 7.2; the human output's "File" column. */
  filename?: string;
}

/**
 * The block-status triple qemu reports for an extent: present = allocated in some layer; zero = reads as zeros
 * and is known to; data = the bytes are stored. Compressed data has no single host offset.
 */
export function mapEntryOf(extent: Extent): MapEntry {
  const entry: MapEntry = {
    start: extent.offset,
    length: extent.length,
    depth: extent.depth,
    present: extent.kind !== 'unallocated',
    zero: extent.kind !== 'data' || extent.zeroData === true,
    data: extent.kind === 'data',
  };
  if (extent.hostOffset !== undefined && !extent.compressed) entry.offset = extent.hostOffset;
  if (extent.hostFile !== undefined) entry.filename = extent.hostFile;
  return entry;
}

function sameKind(a: MapEntry, b: MapEntry): boolean {
  return (
    a.start + a.length === b.start &&
    a.depth === b.depth &&
    a.present === b.present &&
    a.zero === b.zero &&
    a.data === b.data &&
    a.filename === b.filename &&
    ((a.offset === undefined && b.offset === undefined) || (a.offset !== undefined && b.offset !== undefined && a.offset + a.length === b.offset))
  );
}

/** The map of [start, start+length) as qemu-img map gives it: contiguous entries with equal flags merged. */
export async function* mapImage(device: BlockDevice, start = 0, length = device.size - start): AsyncGenerator<MapEntry> {
  let pending: MapEntry | undefined;
  for await (const extent of walkExtents(device, start, length)) {
    const entry = mapEntryOf(extent);
    if (pending !== undefined && sameKind(pending, entry)) {
      pending.length += entry.length;
      continue;
    }
    if (pending !== undefined) yield pending;
    pending = entry;
  }
  if (pending !== undefined) yield pending;
}
