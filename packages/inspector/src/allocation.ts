import type { Extent, Image } from '@qcowkit/qcow2';

/** What a guest range is, in the words of the inspector's legend. */
export type RegionKind = 'data' | 'compressed' | 'zero' | 'backing' | 'unallocated';

export const REGION_KINDS: readonly RegionKind[] = ['data', 'compressed', 'zero', 'backing', 'unallocated'];

/** One cell of the allocation map: a run of clusters, and how many of its bytes are of each kind. */
export interface MapCell {
  offset: number;
  length: number;
  bytes: Record<RegionKind, number>;
  /** The kind holding most of the cell's bytes (what the cell is drawn as). */
  kind: RegionKind;
}

export interface AllocationMap {
  cells: MapCell[];
  /** Bytes of each kind over the whole disk. */
  totals: Record<RegionKind, number>;
}

/** How the engine's extent reads on the map: this image's own data, zeros, compressed clusters, or a lower layer. */
export function kindOf(extent: Extent): RegionKind {
  if (extent.kind === 'unallocated') return 'unallocated';
  if (extent.depth > 0) return 'backing';
  if (extent.kind === 'zero') return 'zero';
  return extent.compressed ? 'compressed' : 'data';
}

const none = (): Record<RegionKind, number> => ({ data: 0, compressed: 0, zero: 0, backing: 0, unallocated: 0 });

/** Extents are asked for in windows, so a huge sparse disk never builds one huge list. */
const WINDOW = 8 * 1024 * 1024 * 1024;

/**
 * The allocation map of `image` in at most `maxCells` cells, each a whole number of clusters (metadata only:
 * no guest data is read).
 */
export async function allocationMap(image: Image, maxCells = 1024): Promise<AllocationMap> {
  const size = image.virtualSize;
  const cluster = image.clusterSize ?? 65536;
  const clusters = Math.max(1, Math.ceil(size / cluster));
  const cellLength = Math.ceil(clusters / Math.min(maxCells, clusters)) * cluster;
  const cells: MapCell[] = [];
  for (let offset = 0; offset < size; offset += cellLength) {
    cells.push({ offset, length: Math.min(cellLength, size - offset), bytes: none(), kind: 'unallocated' });
  }
  const totals = none();
  for (let window = 0; window < size; window += WINDOW) {
    for (const extent of await image.extents(window, Math.min(WINDOW, size - window))) {
      const kind = kindOf(extent);
      totals[kind] += extent.length;
      // Spread the extent over the cells it covers.
      let at = extent.offset;
      const end = extent.offset + extent.length;
      while (at < end) {
        const cell = cells[Math.floor(at / cellLength)]!;
        const upto = Math.min(end, cell.offset + cell.length);
        cell.bytes[kind] += upto - at;
        at = upto;
      }
    }
  }
  for (const cell of cells) cell.kind = REGION_KINDS.reduce((best, kind) => (cell.bytes[kind] > cell.bytes[best] ? kind : best), 'unallocated' as RegionKind);
  return { cells, totals };
}
