import type { SnapshotEntry } from '../format/snapshot-table.js';
import type { L1Table } from '../engine/mapping.js';
import type { Qcow2Image } from '../engine/qcow2-image.js';
import { Qcow2Writer } from '../engine/image-writer.js';
import { applySnapshot, createSnapshot, deleteSnapshot, type CreateSnapshotOptions } from '../engine/snapshots.js';
import { Qcow2Error } from '../errors.js';
import { SegmentKind, type Segment } from '../engine/segments.js';
import { hasMetadataPreallocation } from '../engine/metadata-preallocation.js';
import { pushExtent, type BlockDevice, type Extent } from './block-device.js';
import { checkRange } from './range.js';

/**
 * A qcow2 image as a block device: its active state, or the read-only state of one internal snapshot, over an
 * optional backing device. Unallocated ranges read from the backing device, and as zeros past its end.
 */
export class Qcow2Device implements BlockDevice {
  readonly format = 'qcow2';
  /** Whether qemu would take this image for metadata-preallocated (computed on first use). */
  private metadataPreallocated: Promise<boolean> | undefined;
  /** Set when the device was opened for writing. */
  private writer: Qcow2Writer | undefined;
  /**
   * qemu's cache modes, reduced to what matters here: 'writeback' makes flush() and close() reach stable storage
   * (fsync); 'unsafe' (qemu-img convert's default) only writes metadata back, in order, and leaves syncing to
   * the OS — a crash of the process still leaves a consistent image, a power loss may not.
   */
  cacheMode: 'writeback' | 'unsafe' = 'writeback';

  constructor(
    readonly filename: string,
    readonly image: Qcow2Image,
    readonly backing: BlockDevice | undefined,
    private readonly snapshotL1: L1Table | undefined = undefined,
    private fixedSize: number | undefined = undefined,
    /** The snapshot this device shows, when it is a snapshot view. */
    readonly snapshot: SnapshotEntry | undefined = undefined,
  ) {}

  /** Makes the (active, not snapshot) device writable; the backing chain stays read-only. */
  async enableWrites(): Promise<void> {
    if (this.snapshot !== undefined) throw new Qcow2Error('READ_ONLY', 'a snapshot view is read-only', { file: this.filename });
    this.writer ??= await Qcow2Writer.attach(this.image);
  }

  get writable(): boolean {
    return this.writer !== undefined;
  }

  /** The writer of a device opened for writing (engine operations that allocate use its refcounts). */
  get attachedWriter(): Qcow2Writer | undefined {
    return this.writer;
  }

  private requireWriter(): Qcow2Writer {
    if (this.writer === undefined) throw new Qcow2Error('READ_ONLY', 'image is open read-only', { file: this.filename });
    return this.writer;
  }

  async write(buffer: Uint8Array, offset: number): Promise<void> {
    checkRange(this, offset, buffer.length);
    if (buffer.length === 0) return;
    await this.requireWriter().write(offset, buffer, (dest, at) => this.readBacking(dest, at));
  }

  /** Internal snapshot of the active state (qemu-img snapshot -c). */
  createSnapshot(options: CreateSnapshotOptions): Promise<SnapshotEntry> {
    return createSnapshot(this.image, this.requireWriter(), options);
  }

  /** Reverts the active state to a snapshot (qemu-img snapshot -a): id first, then name. */
  applySnapshot(idOrName: string): Promise<SnapshotEntry> {
    return applySnapshot(this.image, this.requireWriter(), idOrName);
  }

  /** Deletes a snapshot (qemu-img snapshot -d): id first, then name. */
  deleteSnapshot(idOrName: string): Promise<SnapshotEntry> {
    return deleteSnapshot(this.image, this.requireWriter(), idOrName);
  }

  /** Makes a range read as zeros (qemu-io write -z; -u lets whole clusters be deallocated). */
  async writeZeroes(offset: number, length: number, options: { unmap?: boolean } = {}): Promise<void> {
    checkRange(this, offset, length);
    await this.requireWriter().writeZeroes(offset, length, (dest, at) => this.readBacking(dest, at), {
      unmap: options.unmap ?? false,
      hasBacking: this.backing !== undefined || this.image.backingFile !== undefined,
    });
  }

  /** Discards whole clusters in a range (qemu-io discard). */
  async discard(offset: number, length: number): Promise<void> {
    checkRange(this, offset, length);
    await this.requireWriter().discard(offset, length, (dest, at) => this.readBacking(dest, at), {
      hasBacking: this.backing !== undefined || this.image.backingFile !== undefined,
    });
  }

  /** Stores an already compressed cluster at cluster-aligned guest `offset` (convert -c). */
  async writeCompressed(offset: number, stored: Uint8Array): Promise<void> {
    checkRange(this, offset, Math.min(this.image.clusterSize, this.size - offset));
    await this.requireWriter().writeCompressed(offset, stored);
  }

  async flush(): Promise<void> {
    await this.writer?.flush(this.cacheMode === 'writeback');
  }

  async preallocate(mode: 'metadata' | 'falloc' | 'full'): Promise<void> {
    await this.requireWriter().preallocate(mode);
  }

  /**
   * A read-only view of the disk as it was when `snapshot` was taken, over the same backing device. Its size is
   * the image's current virtual size, as qemu-img convert -l gives it (a snapshot taken before the disk grew
   * reads as zeros past its own disk size, which snapshot.diskSize still records).
   */
  async snapshotView(snapshot: SnapshotEntry): Promise<Qcow2Device> {
    const l1 = await this.image.snapshotL1(snapshot);
    return new Qcow2Device(this.filename, this.image, this.backing, l1, this.image.virtualSize, snapshot);
  }

  /** The active state follows the image (a resize changes it); a snapshot view keeps what it was made with. */
  get size(): number {
    // qemu keeps a disk's size in 512-byte sectors: a header size that is not a multiple rounds down.
    return this.fixedSize ?? Math.floor(this.image.virtualSize / 512) * 512;
  }

  private get l1(): L1Table {
    return this.snapshotL1 ?? this.image.activeL1;
  }

  /** Changes the virtual size (qemu-img resize); shrinking drops the data past the new end. */
  async resize(newSize: number): Promise<void> {
    const oldSize = this.size;
    const clusterSize = this.image.layout.clusterSize;
    // The last cluster of a shrunk disk keeps its bytes past the new end, and growing would show them again
    // (qemu 7.2 does show them). Zero them while they are still inside the disk, before the size changes, so a
    // kill in between leaves the old disk or a clean new one.
    if (newSize < oldSize && newSize % clusterSize !== 0) {
      await this.writeZeroes(newSize, Math.min(oldSize, Math.ceil(newSize / clusterSize) * clusterSize) - newSize);
    }
    await this.requireWriter().resize(newSize);
    // A grown disk reads zeros in its new part: where a longer backing file has data (as qemu ensures), and in
    // the rest of its old last cluster, which an image shrunk by another tool may still hold data in.
    const exposedEnd = Math.min(newSize, Math.max(this.backing?.size ?? 0, Math.ceil(oldSize / clusterSize) * clusterSize));
    if (exposedEnd > oldSize) await this.writeZeroes(oldSize, exposedEnd - oldSize);
  }

  async read(buffer: Uint8Array, offset: number): Promise<void> {
    checkRange(this, offset, buffer.length);
    if (buffer.length === 0) return;
    const compressed: Segment[] = [];
    const compressedDests: Uint8Array[] = [];
    for (const seg of await this.image.segments(offset, buffer.length, this.l1)) {
      const dest = buffer.subarray(seg.guestOffset - offset, seg.guestOffset - offset + seg.length);
      if (seg.kind === SegmentKind.Unallocated) await this.readBacking(dest, seg.guestOffset);
      else if (seg.kind === SegmentKind.Compressed) {
        compressed.push(seg);
        compressedDests.push(dest);
      } else await this.image.readSegment(seg, dest);
    }
    if (compressed.length === 1) await this.image.readSegment(compressed[0]!, compressedDests[0]!);
    else if (compressed.length > 1) await this.image.readCompressedSegments(compressed, compressedDests);
  }

  private async readBacking(dest: Uint8Array, offset: number): Promise<void> {
    const backing = this.backing;
    const inBacking = backing === undefined ? 0 : Math.max(0, Math.min(dest.length, backing.size - offset));
    if (inBacking > 0) await backing!.read(dest.subarray(0, inBacking), offset);
    if (inBacking < dest.length) dest.fill(0, inBacking);
  }

  async extents(offset: number, length: number): Promise<Extent[]> {
    checkRange(this, offset, length);
    const out: Extent[] = [];
    if (length === 0) return out;
    for (const seg of await this.image.segments(offset, length, this.l1)) {
      const base = { offset: seg.guestOffset, length: seg.length, depth: 0 };
      switch (seg.kind) {
        case SegmentKind.Data:
          await this.dataExtents(out, base.offset, base.length, seg.hostOffset);
          break;
        case SegmentKind.Compressed:
          pushExtent(out, { ...base, kind: 'data', compressed: true, hostFile: this.image.storage.name });
          break;
        case SegmentKind.Zero:
          pushExtent(
            out,
            seg.hostOffset >= 0 ? { ...base, kind: 'zero', hostOffset: seg.hostOffset, hostFile: this.image.dataStorage.name } : { ...base, kind: 'zero' },
          );
          break;
        case SegmentKind.Unallocated:
          await this.backingExtents(out, seg.guestOffset, seg.length, seg.hostOffset);
          break;
      }
    }
    return out;
  }

  /**
   * Data extents, as qemu's block status gives them: for an image qemu takes for metadata-preallocated (more
   * clusters counted than the file holds), data over holes in the host file is also known to read as zeros
   * (qemu's BDRV_BLOCK_RECURSE); map shows it as "zero": true, and convert and compare skip it.
   */
  private async dataExtents(out: Extent[], offset: number, length: number, hostOffset: number): Promise<void> {
    const hostFile = this.image.dataStorage.name;
    this.metadataPreallocated ??= hasMetadataPreallocation(this.image);
    const storage = this.image.dataStorage;
    if (!(await this.metadataPreallocated) || storage.dataRegions === undefined) {
      pushExtent(out, { offset, length, depth: 0, kind: 'data', hostOffset, hostFile });
      return;
    }
    for (const region of await storage.dataRegions(hostOffset, length)) {
      const extent: Extent = { offset: offset + (region.offset - hostOffset), length: region.length, depth: 0, kind: 'data', hostOffset: region.offset, hostFile };
      if (region.hole) extent.zeroData = true;
      pushExtent(out, extent);
    }
  }

  private async backingExtents(out: Extent[], offset: number, length: number, hostOffset: number): Promise<void> {
    const backing = this.backing;
    const inBacking = backing === undefined ? 0 : Math.max(0, Math.min(length, backing.size - offset));
    if (inBacking > 0) {
      for (const extent of await backing!.extents(offset, inBacking)) pushExtent(out, { ...extent, depth: extent.depth + 1 });
    }
    // Past the backing file's end (or with none), this layer answers: nothing allocated (though a cluster may be
    // reserved for it, as extended L2 preallocation does).
    if (inBacking < length) {
      const rest: Extent = { offset: offset + inBacking, length: length - inBacking, kind: 'unallocated', depth: 0 };
      if (hostOffset >= 0) {
        rest.hostOffset = hostOffset + inBacking;
        rest.hostFile = this.image.dataStorage.name;
      }
      pushExtent(out, rest);
    }
  }

  /** Closes the image and the chain below it; a snapshot view shares them, so close either, once. */
  async close(): Promise<void> {
    if (this.writer !== undefined) {
      await this.writer.close(this.cacheMode === 'writeback');
      this.writer = undefined;
    }
    await this.image.close();
    await this.backing?.close();
  }
}
