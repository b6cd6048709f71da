import { readZeroPadded, type Storage } from '../io/storage.js';
import { pushExtent, type BlockDevice, type Extent } from './block-device.js';
import { checkRange } from './range.js';

/** A raw disk image: guest offset = file offset. */
export class RawDevice implements BlockDevice {
  readonly format = 'raw';
  readonly backing = undefined;

  private constructor(
    readonly filename: string,
    readonly storage: Storage,
    public size: number,
  ) {}

  async resize(newSize: number): Promise<void> {
    await this.storage.truncate(newSize);
    this.size = Math.ceil(newSize / 512) * 512;
  }

  /** qemu counts a raw image in 512-byte sectors: a file whose length is not a multiple reads zeros to the next. */
  static async open(storage: Storage, filename = storage.name): Promise<RawDevice> {
    return new RawDevice(filename, storage, Math.ceil((await storage.size()) / 512) * 512);
  }

  async read(buffer: Uint8Array, offset: number): Promise<void> {
    checkRange(this, offset, buffer.length);
    await readZeroPadded(this.storage, buffer, offset);
  }

  async extents(offset: number, length: number): Promise<Extent[]> {
    checkRange(this, offset, length);
    const out: Extent[] = [];
    if (length === 0) return out;
    if (this.storage.dataRegions === undefined) {
      pushExtent(out, { offset, length, kind: 'data', depth: 0, hostOffset: offset, hostFile: this.filename });
      return out;
    }
    for (const region of await this.storage.dataRegions(offset, length)) {
      pushExtent(out, { offset: region.offset, length: region.length, kind: region.hole ? 'zero' : 'data', depth: 0, hostOffset: region.offset, hostFile: this.filename });
    }
    return out;
  }

  async write(buffer: Uint8Array, offset: number): Promise<void> {
    checkRange(this, offset, buffer.length);
    await this.storage.write(buffer, offset);
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    checkRange(this, offset, length);
    const zeros = new Uint8Array(Math.min(length, 4 * 1024 * 1024));
    for (let at = offset; at < offset + length; at += zeros.length) {
      await this.storage.write(zeros.subarray(0, Math.min(zeros.length, offset + length - at)), at);
    }
  }

  /** Discard on a raw file is advisory; without hole punching it keeps the data, which discard allows. */
  async discard(offset: number, length: number): Promise<void> {
    checkRange(this, offset, length);
  }

  async flush(): Promise<void> {
    await this.storage.flush();
  }

  async close(): Promise<void> {
    await this.storage.close();
  }
}

