/**
 * What one image layer (not the chain) holds for a guest range: the answer to qemu's block-status question
 * asked of one qcow2 file.
 */
export const SegmentKind = {
  /** Nothing here: reads through to the backing file, or zeros without one. */
  Unallocated: 0,
  /** Reads as zeros (zero flag or zero subclusters); hostOffset >= 0 when a cluster stays preallocated. */
  Zero: 1,
  /** Guest data at hostOffset in the data file (the image itself, or the external data file). */
  Data: 2,
  /** One compressed cluster (or the part of it in range); hostOffset is the compressed stream's byte offset. */
  Compressed: 3,
} as const;
export type SegmentKind = (typeof SegmentKind)[keyof typeof SegmentKind];

/** One run of guest range in one image layer, with where its bytes are (the engine-level block status). */
export interface Segment {
  guestOffset: number;
  length: number;
  kind: SegmentKind;
  /** Host offset of guestOffset's byte for Data and preallocated Zero; the stream start for Compressed; else -1. */
  hostOffset: number;
  /** Compressed only: bytes the stream may occupy, and the guest offset of the start of its cluster. */
  compressedSpan: number;
  clusterGuestOffset: number;
}

/**
 * Appends a segment, merging it with the previous one when both say the same thing and, for host-backed
 * segments, the host ranges are contiguous (as qemu-img map merges entries).
 */
export function pushSegment(out: Segment[], segment: Segment): void {
  const last = out[out.length - 1];
  if (
    last !== undefined &&
    last.kind === segment.kind &&
    segment.kind !== SegmentKind.Compressed &&
    last.guestOffset + last.length === segment.guestOffset &&
    ((last.hostOffset === -1 && segment.hostOffset === -1) ||
      (last.hostOffset !== -1 && segment.hostOffset !== -1 && last.hostOffset + last.length === segment.hostOffset))
  ) {
    last.length += segment.length;
    return;
  }
  out.push(segment);
}

export function segment(guestOffset: number, length: number, kind: SegmentKind, hostOffset = -1): Segment {
  return { guestOffset, length, kind, hostOffset, compressedSpan: 0, clusterGuestOffset: 0 };
}
