import type { Extent } from '../../device/block-device.js';
import { readZeroPadded, type Storage } from '../../io/storage.js';
import { rawFileExtents } from '../file-extents.js';
import type { VmdkExtent } from './extent.js';

/** A flat extent: the guest bytes as they are, in a file, from a start offset (FLAT and VMFS lines). */
export class FlatExtent implements VmdkExtent {
  readonly flat = true;
  readonly compressed = false;
  readonly grainSize = undefined;

  constructor(
    readonly storage: Storage,
    readonly fileName: string,
    readonly type: string,
    readonly sectors: number,
    /** Byte offset of the extent's first byte in the file. */
    private readonly start: number,
    private readonly fileSize: number,
  ) {}

  async read(buffer: Uint8Array, offset: number): Promise<void> {
    await readZeroPadded(this.storage, buffer, this.start + offset);
  }

  async extents(out: Extent[], base: number, offset: number, length: number): Promise<void> {
    await rawFileExtents(out, { storage: this.storage, size: this.fileSize, name: this.fileName }, base + offset, this.start + offset, length);
  }

  async firstGrainPastEnd(): Promise<number | undefined> {
    // qemu treats a flat extent as one grain starting at its offset.
    return this.start >= this.fileSize ? 0 : undefined;
  }
}
