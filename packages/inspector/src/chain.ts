import type { ImageInfo } from '@qcowkit/qcow2';

/** One image of a backing chain, as the tree shows it. */
export interface ChainNode {
  filename: string;
  format: string;
  virtualSize: number;
  clusterSize: number | undefined;
  snapshots: number;
  /** The image it is an overlay of. */
  backing: ChainNode | undefined;
}

/** The chain `qemu-img info --backing-chain` lists (top first), as a tree from the top image down. */
export function chainTree(infos: ImageInfo[]): ChainNode | undefined {
  let below: ChainNode | undefined;
  for (const info of [...infos].reverse()) {
    below = {
      filename: info.filename,
      format: info.format,
      virtualSize: info['virtual-size'],
      clusterSize: info['cluster-size'],
      snapshots: info.snapshots?.length ?? 0,
      backing: below,
    };
  }
  return below;
}
