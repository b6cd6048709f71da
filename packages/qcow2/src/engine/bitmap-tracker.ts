import { BitmapFlag, hasBitmapFlag } from '../format/bitmap-directory.js';
import { setBitmapBits } from '../format/bitmap-table.js';
import { BitmapEditor, loadBitmapState, readBitmapTable } from './bitmaps.js';
import type { Qcow2Image } from './qcow2-image.js';
import type { Refcounts } from './refcounts.js';

/**
 * Keeps an image's enabled persistent bitmaps true while qcowkit writes guest data, the way qemu does, so an
 * incremental backup (libvirt's checkpoints) taken after qcowkit wrote still copies everything that changed:
 *
 * 1. before guest data first changes, the enabled bitmaps are flagged in use on disk (one directory switch);
 * 2. every write, zero write, discard and compressed write sets the bits it covers, in memory;
 * 3. when the image is closed, those bits are ORed into the stored bitmaps and the flag is cleared (one switch).
 *
 * A process killed between 1 and 3 leaves the bitmaps flagged in use: qemu lists them as such and refuses to
 * use them (a backup tool then takes a full backup), never a bitmap that misses a write. Disabled bitmaps do not
 * record writes (as in qemu) and are left alone. A change of the disk's size resizes every bitmap, as qemu
 * does, in the header write that changes the size.
 */
export class BitmapTracker {
  /** Per tracked bitmap: granularity and the clusters of bits set so far, by table index. */
  private readonly tracked = new Map<string, { granularity: number; bits: Map<number, Uint8Array> }>();
  private started = false;

  private constructor(
    private readonly image: Qcow2Image,
    private readonly refcounts: Refcounts,
    private readonly names: string[],
  ) {}

  /** A tracker when the image has consistent persistent bitmaps, else undefined; throws when they cannot be read. */
  static async attach(image: Qcow2Image, refcounts: Refcounts): Promise<BitmapTracker | undefined> {
    const state = await loadBitmapState(image);
    if (!state.consistent || state.entries.length === 0) return undefined;
    const enabled = state.entries.filter((e) => hasBitmapFlag(e.flags, BitmapFlag.Auto) && !hasBitmapFlag(e.flags, BitmapFlag.InUse));
    // Tables that cannot be read now could not be stored on close: refuse here, so the writer voids the bitmaps.
    for (const entry of enabled) await readBitmapTable(image, entry);
    return new BitmapTracker(image, refcounts, enabled.map((e) => e.name));
  }

  /** Step 1 (once): the enabled bitmaps flagged in use on disk. */
  async beforeFirstChange(): Promise<void> {
    if (this.started) return;
    this.started = true;
    if (this.names.length === 0) return;
    const editor = await BitmapEditor.open(this.image, this.refcounts);
    await editor.setInUse(this.names, true);
    for (const entry of editor.bitmaps) {
      if (this.names.includes(entry.name)) this.tracked.set(entry.name, { granularity: 2 ** entry.granularityBits, bits: new Map() });
    }
  }

  /** Step 2: guest bytes [offset, offset+length) changed. */
  changed(offset: number, length: number): void {
    if (length <= 0) return;
    const bitsPerCluster = this.image.clusterSize * 8;
    const end = Math.min(offset + length, this.image.virtualSize);
    for (const { granularity, bits } of this.tracked.values()) {
      const endBit = Math.ceil(end / granularity);
      for (let bit = Math.floor(offset / granularity); bit < endBit; ) {
        const index = Math.floor(bit / bitsPerCluster);
        const clusterEnd = Math.min(endBit, (index + 1) * bitsPerCluster);
        let cluster = bits.get(index);
        if (cluster === undefined) bits.set(index, (cluster = new Uint8Array(this.image.clusterSize)));
        setBitmapBits(cluster, bit - index * bitsPerCluster, clusterEnd - index * bitsPerCluster);
        bit = clusterEnd;
      }
    }
  }

  /**
   * The disk's size changes (the writer's last step of a resize): the bitmaps are resized in the same header
   * write that sets the new size (see BitmapEditor.resize), and bits set past a shrunk end are forgotten.
   */
  async resize(newSize: number): Promise<void> {
    const editor = await BitmapEditor.open(this.image, this.refcounts);
    await editor.resize(newSize, [...this.tracked.keys()]);
    const bitsPerCluster = this.image.clusterSize * 8;
    for (const { granularity, bits } of this.tracked.values()) {
      const endBit = Math.ceil(newSize / granularity);
      for (const [index, cluster] of bits) {
        if (index * bitsPerCluster >= endBit) bits.delete(index);
        else for (let bit = endBit - index * bitsPerCluster; bit < bitsPerCluster; bit++) cluster[bit >>> 3] = cluster[bit >>> 3]! & ~(1 << (bit & 7));
      }
    }
  }

  /** Step 3: the bits stored and the in-use flags cleared. */
  async store(): Promise<void> {
    if (!this.started || this.tracked.size === 0) return;
    const editor = await BitmapEditor.open(this.image, this.refcounts);
    // Something cleared autoclear bit 0 meanwhile (commit empties an overlay so): the bitmaps are void anyway.
    if (!editor.consistent) return;
    await editor.storeChanges(new Map([...this.tracked].map(([name, t]) => [name, t.bits])));
    this.tracked.clear();
  }
}
