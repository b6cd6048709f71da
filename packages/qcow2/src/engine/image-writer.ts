import { Qcow2Error } from '../errors.js';
import { BitmapTracker } from './bitmap-tracker.js';
import { CompressedWriter } from './compressed-write.js';
import type { Preallocation } from './create-image.js';
import { writeGuest } from './guest-write.js';
import { voidPersistentBitmaps, writeHeaderFields } from './header-rewrite.js';
import { preallocate } from './preallocation.js';
import type { Qcow2Image } from './qcow2-image.js';
import { Refcounts } from './refcounts.js';
import { resizeForSnapshot, resizeMapping } from './resize-image.js';
import { WriteContext, type BelowReader } from './write-context.js';
import { zeroRange, type ZeroOptions } from './zero-write.js';

export type { BelowReader } from './write-context.js';

/**
 * The write side of one image: what its operations check and what they do first, each concern in a file of
 * its own — guest writes with cluster allocation and copy-on-write (guest-write.ts, subcluster-write.ts),
 * compressed clusters (compressed-write.ts), zero writes and discards (zero-write.ts), resize and L1 growth
 * (resize-image.ts), preallocation (preallocation.ts) — over the state and the write-back order they share
 * (write-context.ts): data, then refcount increases, then L2 entries, then L1 entries; pointers are cleared before
 * refcounts drop. A process killed at any point leaves at worst leaked clusters, never a pointer to a cluster whose
 * refcount does not count it (docs/crash-safety.md).
 */
export class Qcow2Writer {
  private readonly context: WriteContext;
  private readonly compressed: CompressedWriter;
  private firstWriteDone = false;

  private constructor(
    readonly image: Qcow2Image,
    readonly refcounts: Refcounts,
  ) {
    this.context = new WriteContext(image, refcounts);
    this.compressed = new CompressedWriter(this.context);
  }

  static async attach(image: Qcow2Image): Promise<Qcow2Writer> {
    if (image.corrupt) {
      throw new Qcow2Error('READ_ONLY', 'image is marked corrupt; repair it with check -r all before writing', { file: image.name });
    }
    if (image.dirty) {
      throw new Qcow2Error(
        'READ_ONLY',
        'image has the dirty bit set (lazy refcounts after a crash); its refcounts must be repaired (check -r all) before writing',
        { file: image.name },
      );
    }
    const header = image.header;
    const refcounts = await Refcounts.load(image.storage, image.layout, header.refcountTableOffset, header.refcountTableClusters, (offset, clusters) =>
      writeHeaderFields(image.storage, header, { refcountTableOffset: offset, refcountTableClusters: clusters }),
    );
    return new Qcow2Writer(image, refcounts);
  }

  /**
   * Before the first write changes the disk: consistent persistent bitmaps are tracked (flagged in use now,
   * stored on close). Bitmaps this engine cannot maintain (a directory it cannot read) get autoclear bit 0
   * cleared instead, so qemu treats them as inconsistent.
   */
  private async beforeFirstWrite(): Promise<void> {
    if (this.firstWriteDone) return;
    this.firstWriteDone = true;
    const bitmaps = await BitmapTracker.attach(this.image, this.refcounts).catch(() => undefined);
    this.context.bitmaps = bitmaps;
    if (bitmaps !== undefined) {
      await bitmaps.beforeFirstChange();
      return;
    }
    await voidPersistentBitmaps(this.image);
  }

  /** Writes guest bytes at `offset`. Partial clusters that need a new cluster are completed from `below`. */
  async write(offset: number, data: Uint8Array, below: BelowReader): Promise<void> {
    if (offset < 0 || offset + data.length > this.image.virtualSize) {
      throw new Qcow2Error('OUT_OF_RANGE', `write [${offset}, ${offset + data.length}) outside the disk`, { file: this.image.name });
    }
    await this.beforeFirstWrite();
    await writeGuest(this.context, offset, data, below);
  }

  /**
   * Stores one compressed cluster for guest cluster at `guestOffset` (cluster aligned, unallocated). `stored` is
   * the compressed stream; it is packed into a partly used host cluster when it fits, as qemu does.
   */
  async writeCompressed(guestOffset: number, stored: Uint8Array): Promise<void> {
    const { clusterSize, externalDataFile } = this.image.layout;
    if (externalDataFile) throw new Qcow2Error('BAD_ARGUMENT', 'compressed clusters cannot be written to an image with an external data file');
    if (stored.length > clusterSize) throw new Qcow2Error('BAD_ARGUMENT', 'compressed cluster larger than a cluster');
    await this.beforeFirstWrite();
    this.context.bitmaps?.changed(guestOffset, clusterSize);
    await this.compressed.write(guestOffset, stored);
  }

  /**
   * Makes [offset, offset+length) read as zeros. Whole clusters get the zero flag (v3) or zero subcluster bits
   * (extended L2) and keep their host cluster unless `unmap`; on v2, which has no zero flag, they are
   * deallocated when nothing shows through from below, else written as zero bytes. Partial clusters are written
   * as zero bytes.
   */
  async writeZeroes(offset: number, length: number, below: BelowReader, options: { unmap: boolean; hasBacking: boolean }): Promise<void> {
    await this.zero(offset, length, below, { ...options, discard: false });
  }

  /**
   * Discards [offset, offset+length): whole clusters only, as qemu does; v3 keeps reading zeros (zero flag),
   * v2 deallocates (the guest may then see the backing file, which discard allows).
   */
  async discard(offset: number, length: number, below: BelowReader, options: { hasBacking: boolean }): Promise<void> {
    // v2 cannot say "zero" and deallocating would expose the backing file: qemu leaves the data (discard is a hint).
    if (this.image.header.version === 2 && options.hasBacking) return;
    await this.zero(offset, length, below, { unmap: true, hasBacking: options.hasBacking, discard: true });
  }

  private async zero(offset: number, length: number, below: BelowReader, options: ZeroOptions): Promise<void> {
    if (offset < 0 || offset + length > this.image.virtualSize) {
      throw new Qcow2Error('OUT_OF_RANGE', `zero write [${offset}, ${offset + length}) outside the disk`, { file: this.image.name });
    }
    if (length === 0) return;
    await this.beforeFirstWrite();
    await zeroRange(this.context, offset, length, below, options);
  }

  /**
   * Changes the virtual size (resize-image.ts); the size field changes last, alone or, when the image has tracked
   * persistent bitmaps, together with the resized bitmaps in one header write.
   */
  async resize(newSize: number): Promise<void> {
    if (!Number.isSafeInteger(newSize) || newSize < 0 || newSize % 512 !== 0) {
      throw new Qcow2Error('BAD_ARGUMENT', 'The new size must be a multiple of 512', { file: this.image.name });
    }
    await this.beforeFirstWrite();
    await resizeMapping(this.context, newSize);
    if (this.context.bitmaps !== undefined) {
      await this.context.bitmaps.resize(newSize);
      return;
    }
    await writeHeaderFields(this.image.storage, this.image.header, { size: newSize });
  }

  /**
   * Before a snapshot is applied: the active L1 must have at least `l1Entries` entries and the disk the
   * snapshot's size. Clusters past a smaller size are not dropped here: the snapshot's L1 replaces them.
   */
  async resizeForSnapshot(diskSize: number, l1Entries: number): Promise<void> {
    await resizeForSnapshot(this.context, diskSize, l1Entries);
  }

  /** Maps every guest cluster to a host cluster (qemu-img create -o preallocation=…; see preallocation.ts), then flushes. */
  async preallocate(mode: Exclude<Preallocation, 'off'>): Promise<void> {
    await preallocate(this.context, mode);
    await this.flush();
  }

  /** Writes metadata back in order: refcount blocks, L2 tables, then the refcount drops of released clusters. */
  async writeBackMetadata(): Promise<void> {
    await this.context.writeBackMetadata();
  }

  /** The end of writing: metadata written back, tracked bitmaps stored, then flush(durable). */
  async close(durable = true): Promise<void> {
    await this.context.writeBackMetadata();
    await this.context.bitmaps?.store();
    await this.flush(durable);
  }

  /** Metadata written back and, when `durable`, everything on stable storage (fsync). */
  async flush(durable = true): Promise<void> {
    await this.context.flush(durable);
  }
}
