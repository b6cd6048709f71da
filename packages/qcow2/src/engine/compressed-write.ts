import { Qcow2Error } from '../errors.js';
import { COMPRESSED_HI, encodeCompressedDescriptor, entryHostOffset, setSubclusterBitmaps } from '../format/table-entries.js';
import { viewOf } from '../format/struct.js';
import type { WriteContext } from './write-context.js';

/**
 * Compressed cluster writes (qemu's qcow2_co_pwritev_compressed_task and qcow2_alloc_bytes): each stream is
 * packed after the previous one in a partly used host cluster when it fits, as qemu does, so several streams
 * may share a host cluster; every host cluster a stream touches gains one reference.
 *
 * Order: the L2 table first (as qemu allocates it, so the file ends right after the last compressed sector) →
 * host bytes counted → stream written → L2 entry, at write-back after the refcount blocks.
 */
export class CompressedWriter {
  /** Host bytes of the partly filled cluster that streams are packed into (qemu's free_byte_offset); 0: none. */
  private cursor = 0;

  constructor(private readonly context: WriteContext) {
    // A cluster being released may be reused after a write-back: stop packing streams into it.
    context.onClustersReleased = () => {
      this.cursor = 0;
    };
  }

  /** Stores `stored`, the compressed stream of the guest cluster at `guestOffset` (cluster aligned, unallocated). */
  async write(guestOffset: number, stored: Uint8Array): Promise<void> {
    const { image } = this.context;
    const { clusterSize, clusterBits, l2EntryBytes, l2Coverage, l2Entries, extendedL2 } = image.layout;
    const l2Offset = await this.context.l2ForWrite(Math.floor(guestOffset / l2Coverage));
    const view = viewOf(await image.l2Table(l2Offset));
    const at = ((guestOffset / clusterSize) % l2Entries) * l2EntryBytes;
    // Like qemu, a compressed cluster never overwrites one that has host space (data or compressed).
    if ((view.getUint32(at) & COMPRESSED_HI) !== 0 || entryHostOffset(view.getUint32(at), view.getUint32(at + 4)) !== 0) {
      throw new Qcow2Error('IO_ERROR', 'Input/output error: compressed writes need an unallocated cluster', { file: image.name });
    }
    image.l2Cache.markDirty(l2Offset);
    const hostOffset = await this.allocateBytes(stored.length);
    await image.storage.write(stored, hostOffset);
    this.context.releaseEntry(view.getUint32(at), view.getUint32(at + 4));
    const sectors = Math.floor((hostOffset + stored.length - 1) / 512) - Math.floor(hostOffset / 512);
    const { hi, lo } = encodeCompressedDescriptor(hostOffset, sectors, clusterBits);
    view.setUint32(at, hi);
    view.setUint32(at + 4, lo);
    if (extendedL2) setSubclusterBitmaps(view, at, 0, 0);
    image.l2Cache.markDirty(l2Offset);
    this.context.fileReaches(hostOffset + stored.length);
    await this.context.writeBackIfFull();
  }

  /**
   * Byte allocation for a stream: continue in the current partly used host cluster when the stream fits, or
   * spill into the next cluster when that one can be had contiguously; every host cluster the stream touches
   * gains one reference.
   */
  private async allocateBytes(size: number): Promise<number> {
    const { refcounts, clusterSize } = this.context;
    let offset = this.cursor;
    // A cluster whose refcount is already at the maximum (1-bit refcounts) takes no more streams.
    if (offset !== 0 && (await refcounts.get(Math.floor(offset / clusterSize))) >= refcounts.max) offset = 0;
    if (offset !== 0 && offset % clusterSize !== 0) {
      const used = offset % clusterSize;
      const clusterStart = offset - used;
      if (used + size <= clusterSize) {
        await refcounts.adjust(clusterStart / clusterSize, 1, 1);
      } else {
        const next = await refcounts.allocate(1);
        if (next !== clusterStart + clusterSize) {
          // Not contiguous: start the stream in the fresh cluster instead.
          offset = next;
        } else {
          await refcounts.adjust(clusterStart / clusterSize, 1, 1);
        }
      }
    } else {
      offset = await refcounts.allocate(1);
    }
    this.cursor = offset + size;
    return offset;
  }
}
