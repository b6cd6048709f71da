/** A domain's disks with their whole image chains: what `qcowkit vm disks` shows. */
import { chainLayers, openChain } from './disk-chain.js';
import { messageOf } from './errors.js';
import type { DiskDefinition, Hypervisor } from './hypervisor.js';

export interface DiskChainReport extends DiskDefinition {
  /** Why the chain could not be completed from the images (the XML's part is still in `chain`). */
  chainError?: string;
}

/**
 * The disks of the domain's live XML (the persistent one with `inactive`). Where the XML does not list the whole
 * chain (a shut-off domain's definition), it is completed from the image headers through the engine, with the
 * formats the XML and the headers state (never probed).
 */
export async function describeDisks(hypervisor: Hypervisor, domain: string, options: { inactive?: boolean } = {}): Promise<DiskChainReport[]> {
  const disks = await hypervisor.disks(domain, options);
  const out: DiskChainReport[] = [];
  for (const disk of disks) {
    const top = disk.chain[0];
    if (disk.chainComplete || top === undefined || top.path === undefined || (top.type !== 'file' && top.type !== 'block')) {
      out.push(disk);
      continue;
    }
    try {
      // Metadata only, as `qemu-img info -U` (a guest may have started meanwhile).
      const device = await openChain(disk.chain, false, { forceShare: true });
      try {
        const layers = chainLayers(device).map((layer, i) => ({ ...layer, type: disk.chain[i]?.type ?? layer.type }));
        out.push({ ...disk, chain: layers, chainComplete: true });
      } finally {
        await device.close();
      }
    } catch (error) {
      out.push({ ...disk, chainError: messageOf(error) });
    }
  }
  return out;
}
