import { Qcow2Error } from '../errors.js';
import {
  ALLOC_BITMAP_AT,
  COMPRESSED_HI,
  COPIED_HI,
  ZERO_BITMAP_AT,
  ZERO_LO,
  compressedSpan,
  decodeCompressedDescriptor,
  entryHostOffset,
} from '../format/table-entries.js';
import type { ImageLayout } from './image-layout.js';
import { SegmentKind, pushSegment, segment, type Segment } from './segments.js';

/** An L1 table as its raw big-endian bytes; the active one or a snapshot's. */
export interface L1Table {
  bytes: Uint8Array;
  view: DataView;
  entries: number;
}

export function l1TableFrom(bytes: Uint8Array): L1Table {
  return { bytes, view: new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength), entries: bytes.length / 8 };
}

/** Loads an L2 table (validated and cached by the caller). */
export type L2Loader = (l2Offset: number) => Promise<DataView>;

function corrupt(message: string): Qcow2Error {
  return new Qcow2Error('BAD_L2_ENTRY', message);
}

/**
 * Walks L1/L2 for guest range [offset, offset+length) and returns its segments, merged. One L2 table is loaded
 * per 'l2Coverage' bytes of allocated L1; an unallocated L1 entry answers for its whole range at once, which is
 * what makes map/convert of a huge, mostly empty image fast.
 */
export async function mapGuestRange(
  layout: ImageLayout,
  l1: L1Table,
  loadL2: L2Loader,
  offset: number,
  length: number,
): Promise<Segment[]> {
  const out: Segment[] = [];
  const end = offset + length;
  const { clusterSize, clusterBits, l2Coverage, l2Entries, l2EntryBytes, extendedL2, subclusterSize, externalDataFile } = layout;
  let pos = offset;
  while (pos < end) {
    const l1Index = Math.floor(pos / l2Coverage);
    const tableEnd = Math.min(end, (l1Index + 1) * l2Coverage);
    if (l1Index >= l1.entries) {
      // Past the L1 table (a snapshot's shorter L1, or a grown disk): nothing allocated.
      pushSegment(out, segment(pos, end - pos, SegmentKind.Unallocated));
      break;
    }
    const l1Hi = l1.view.getUint32(l1Index * 8);
    const l1Lo = l1.view.getUint32(l1Index * 8 + 4);
    const l2Offset = entryHostOffset(l1Hi, l1Lo);
    if (l2Offset === 0) {
      pushSegment(out, segment(pos, tableEnd - pos, SegmentKind.Unallocated));
      pos = tableEnd;
      continue;
    }
    if (l2Offset % clusterSize !== 0) throw corrupt(`L2 table offset 0x${l2Offset.toString(16)} is not cluster aligned`);
    const l2 = await loadL2(l2Offset);
    let index = Math.floor((pos % l2Coverage) / clusterSize);
    while (pos < tableEnd && index < l2Entries) {
      const clusterStart = (l1Index * l2Entries + index) * clusterSize;
      const clusterEnd = Math.min(clusterStart + clusterSize, tableEnd);
      const hi = l2.getUint32(index * l2EntryBytes);
      const lo = l2.getUint32(index * l2EntryBytes + 4);
      if ((hi & COMPRESSED_HI) !== 0) {
        const { hostOffset, additionalSectors } = decodeCompressedDescriptor(hi, lo, clusterBits);
        out.push({
          guestOffset: pos,
          length: clusterEnd - pos,
          kind: SegmentKind.Compressed,
          hostOffset,
          compressedSpan: compressedSpan(hostOffset, additionalSectors),
          clusterGuestOffset: clusterStart,
        });
      } else {
        const host = entryHostOffset(hi, lo);
        if (host % clusterSize !== 0) throw corrupt(`cluster offset 0x${host.toString(16)} is not cluster aligned`);
        // Offset 0 is a real cluster in an external data file; there every cluster has refcount 1, so COPIED
        // tells an allocated cluster at offset 0 from an unallocated one (as qemu decides).
        const allocated = host !== 0 || (externalDataFile && (hi & COPIED_HI) !== 0);
        if (!extendedL2) {
          const inCluster = pos - clusterStart;
          if ((lo & ZERO_LO) !== 0) {
            pushSegment(out, segment(pos, clusterEnd - pos, SegmentKind.Zero, allocated ? host + inCluster : -1));
          } else if (!allocated) {
            pushSegment(out, segment(pos, clusterEnd - pos, SegmentKind.Unallocated));
          } else {
            pushSegment(out, segment(pos, clusterEnd - pos, SegmentKind.Data, host + inCluster));
          }
        } else {
          const zeroBits = l2.getUint32(index * l2EntryBytes + ZERO_BITMAP_AT);
          const allocBits = l2.getUint32(index * l2EntryBytes + ALLOC_BITMAP_AT);
          if ((zeroBits & allocBits) !== 0) throw corrupt(`subcluster marked both allocated and zero (L2 entry for guest offset ${clusterStart})`);
          if (!allocated && allocBits !== 0) throw corrupt(`subclusters allocated in an unallocated cluster (guest offset ${clusterStart})`);
          let sub = Math.floor((pos - clusterStart) / subclusterSize);
          while (pos < clusterEnd) {
            const subEnd = Math.min(clusterStart + (sub + 1) * subclusterSize, clusterEnd);
            const bit = 1 << sub;
            const inCluster = pos - clusterStart;
            if ((allocBits & bit) !== 0) pushSegment(out, segment(pos, subEnd - pos, SegmentKind.Data, host + inCluster));
            else if ((zeroBits & bit) !== 0) pushSegment(out, segment(pos, subEnd - pos, SegmentKind.Zero, allocated ? host + inCluster : -1));
            // An unallocated subcluster of an allocated cluster still has a host offset (qemu's map shows it).
            else pushSegment(out, segment(pos, subEnd - pos, SegmentKind.Unallocated, allocated ? host + inCluster : -1));
            pos = subEnd;
            sub++;
          }
        }
      }
      pos = clusterEnd;
      index++;
    }
  }
  return out;
}
