import { viewOf, writeU64le } from '../../format/struct.js';
import { VMDK_SECTOR } from './sparse-header.js';

/**
 * Stream markers of a stream-optimized VMDK (VMware Virtual Disk Format 5.0 §4): every compressed grain is
 * preceded by a grain marker {u64 lba, u32 size} and its deflate stream, padded to a sector; the metadata that
 * follows the grains (grain tables, grain directory, footer) each come after a one-sector metadata marker
 * {u64 numSectors, u32 size = 0, u32 type}, and a marker of all zeros ends the stream. Little-endian.
 */
export const MarkerType = {
  EndOfStream: 0,
  GrainTable: 1,
  GrainDirectory: 2,
  Footer: 3,
} as const;

/** Bytes in front of a grain's compressed data: lba (u64) and size (u32). */
export const GRAIN_MARKER_SIZE = 12;

/** A metadata marker: one sector announcing `sectors` sectors of the given type. */
export function metadataMarker(type: number, sectors: number): Uint8Array {
  const bytes = new Uint8Array(VMDK_SECTOR);
  const view = viewOf(bytes);
  writeU64le(view, 0, sectors);
  view.setUint32(8, 0, true);
  view.setUint32(12, type, true);
  return bytes;
}

/**
 * A compressed grain as stored: marker, data, zero padding to a whole sector. `lba` is the grain's first guest
 * sector.
 */
export function grainRecord(lba: number, compressed: Uint8Array): Uint8Array {
  const length = Math.ceil((GRAIN_MARKER_SIZE + compressed.length) / VMDK_SECTOR) * VMDK_SECTOR;
  const bytes = new Uint8Array(length);
  const view = viewOf(bytes);
  writeU64le(view, 0, lba);
  view.setUint32(8, compressed.length, true);
  bytes.set(compressed, GRAIN_MARKER_SIZE);
  return bytes;
}

/** The size field of the grain marker at the start of `bytes`. */
export function grainDataLength(bytes: Uint8Array): number {
  return viewOf(bytes).getUint32(8, true);
}
