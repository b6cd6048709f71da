/**
 * The layout of a qcow2 image written in one forward pass (convert to a pipe): every structure's place is
 * decided before the first byte goes out, so nothing is ever rewritten. In file order:
 *
 *   cluster 0          header
 *   refcount table     one entry per refcount block
 *   refcount blocks    covering every cluster of the file
 *   L1 table
 *   L2 tables          one per L1 entry that maps any data, in guest order
 *   data region        data clusters (and compressed streams) in guest order
 *
 * The refcount structures count themselves, so their size depends on the file's length: a fixpoint.
 */
export interface StreamLayout {
  clusterSize: number;
  refcountTableClusters: number;
  refcountBlocks: number;
  l1Clusters: number;
  l2Tables: number;
  /** Clusters before the data region (header and all metadata). */
  metadataClusters: number;
  /** Clusters of the data region (its last one may be partly used). */
  dataClusters: number;
  refcountTableOffset: number;
  refcountBlocksOffset: number;
  l1TableOffset: number;
  l2TablesOffset: number;
  dataOffset: number;
}

export function planStreamLayout(clusterSize: number, refcountBits: number, l1Entries: number, l2Tables: number, dataBytes: number): StreamLayout {
  const entriesPerBlock = (clusterSize * 8) / refcountBits;
  const l1Clusters = Math.ceil((l1Entries * 8) / clusterSize);
  const dataClusters = Math.ceil(dataBytes / clusterSize);
  let refcountBlocks = 1;
  let refcountTableClusters = 1;
  for (;;) {
    const total = 1 + refcountTableClusters + refcountBlocks + l1Clusters + l2Tables + dataClusters;
    const blocks = Math.ceil(total / entriesPerBlock);
    const tableClusters = Math.ceil((blocks * 8) / clusterSize);
    if (blocks <= refcountBlocks && tableClusters <= refcountTableClusters) break;
    refcountBlocks = Math.max(refcountBlocks, blocks);
    refcountTableClusters = Math.max(refcountTableClusters, tableClusters);
  }
  const metadataClusters = 1 + refcountTableClusters + refcountBlocks + l1Clusters + l2Tables;
  return {
    clusterSize,
    refcountTableClusters,
    refcountBlocks,
    l1Clusters,
    l2Tables,
    metadataClusters,
    dataClusters,
    refcountTableOffset: clusterSize,
    refcountBlocksOffset: (1 + refcountTableClusters) * clusterSize,
    l1TableOffset: (1 + refcountTableClusters + refcountBlocks) * clusterSize,
    l2TablesOffset: (1 + refcountTableClusters + refcountBlocks + l1Clusters) * clusterSize,
    dataOffset: metadataClusters * clusterSize,
  };
}

/**
 * Places items in the data region, relative to its start (which is cluster aligned): a whole data cluster goes
 * to the next cluster boundary; a compressed stream goes right after the previous item, as qemu packs them,
 * unless the cluster it would start in is already referenced as often as the refcount width allows (then it
 * starts a new cluster). Deterministic, so the same items replayed give the same places.
 */
export class DataRegionPacker {
  /** End of the last item placed. */
  end = 0;
  /** References to the cluster that holds byte end-1 (compressed streams ending in it). */
  private lastClusterRefs = 0;

  constructor(
    private readonly clusterSize: number,
    private readonly maxRefcount: number,
  ) {}

  /** The place of an item of `length` bytes; `compressed` items may share clusters. */
  place(length: number, compressed: boolean): number {
    const C = this.clusterSize;
    let start = this.end;
    const sharesCluster = start % C !== 0;
    if (!compressed || (sharesCluster && this.lastClusterRefs + 1 > this.maxRefcount)) start = Math.ceil(start / C) * C;
    const firstCluster = Math.floor(start / C);
    const lastCluster = Math.floor((start + length - 1) / C);
    this.lastClusterRefs = lastCluster === firstCluster && start % C !== 0 ? this.lastClusterRefs + 1 : 1;
    this.end = start + length;
    return start;
  }
}
