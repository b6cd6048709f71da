import { getRefcount } from '../format/refcount-block.js';
import { viewOf } from '../format/struct.js';
import type { Qcow2Image } from './qcow2-image.js';
import { Refcounts } from './refcounts.js';

/**
 * qemu's test for an image made with preallocation=metadata (qcow2_detect_metadata_preallocation): the file has
 * clearly more clusters with a non-zero refcount than blocks the file system really holds, namely at least
 * max(held * 10 / 9, held + 2) of them, where held = allocated bytes / cluster size. Refcounts are counted only
 * as far as that threshold. Storages that cannot tell their allocation never qualify.
 */
export async function hasMetadataPreallocation(image: Qcow2Image): Promise<boolean> {
  const storage = image.storage;
  if (storage.allocatedSize === undefined) return false;
  const clusterSize = image.clusterSize;
  const heldClusters = Math.floor((await storage.allocatedSize()) / clusterSize);
  const threshold = Math.max(Math.floor((heldClusters * 10) / 9), heldClusters + 2);
  const endCluster = Math.ceil((await storage.size()) / clusterSize);
  const refcounts = await Refcounts.load(storage, image.layout, image.header.refcountTableOffset, image.header.refcountTableClusters, async () => {});
  const perBlock = refcounts.entriesPerBlock;
  const block = new Uint8Array(clusterSize);
  const view = viewOf(block);
  let counted = 0;
  for (let index = 0; index * perBlock < endCluster && counted < threshold; index++) {
    const offset = refcounts.blockOffsets[index] ?? 0;
    if (offset === 0) continue;
    if ((await storage.read(block, offset)) < clusterSize) block.fill(0);
    const entries = Math.min(perBlock, endCluster - index * perBlock);
    for (let i = 0; i < entries && counted < threshold; i++) if (getRefcount(view, i, image.layout.refcountBits) !== 0) counted++;
  }
  return counted >= threshold;
}

