import type { BlockDevice, Extent } from '../device/block-device.js';

const SECTOR = 512;

/** Told about each part of the source that could not be read (qemu-img's salvage warnings). */
export type SalvageWarning = (what: 'read' | 'block-status', offset: number, error: unknown) => void;

/**
 * qemu-img convert --salvage: a source whose unreadable parts read as zeros. A read that fails is retried
 * sector by sector; each 512-byte sector that still fails is zero-filled and reported. Block status that fails
 * makes the range "data", so it is read (and salvaged) rather than skipped. Used only by convert.
 */
export class SalvagingDevice implements BlockDevice {
  constructor(
    private readonly inner: BlockDevice,
    private readonly warn: SalvageWarning,
  ) {}

  get filename(): string {
    return this.inner.filename;
  }
  get format(): BlockDevice['format'] {
    return this.inner.format;
  }
  get size(): number {
    return this.inner.size;
  }
  get backing(): BlockDevice | undefined {
    return this.inner.backing;
  }

  async read(buffer: Uint8Array, offset: number): Promise<void> {
    try {
      await this.inner.read(buffer, offset);
      return;
    } catch {
      // Fall through to sector-wise reads, which find and report exactly what fails.
    }
    for (let at = 0; at < buffer.length; at += SECTOR) {
      const sector = buffer.subarray(at, Math.min(buffer.length, at + SECTOR));
      try {
        await this.inner.read(sector, offset + at);
      } catch (error) {
        this.warn('read', offset + at, error);
        sector.fill(0);
      }
    }
  }

  async extents(offset: number, length: number): Promise<Extent[]> {
    try {
      return await this.inner.extents(offset, length);
    } catch (error) {
      this.warn('block-status', offset, error);
      return [{ offset, length, kind: 'data', depth: 0 }];
    }
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}
