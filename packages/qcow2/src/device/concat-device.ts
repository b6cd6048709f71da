import { pushExtent, type BlockDevice, type Extent } from './block-device.js';
import { checkRange } from './range.js';

/**
 * Several devices end to end, as qemu-img convert reads several source images into one target. Each part
 * answers for its own range; extents keep the part's depth.
 */
export class ConcatDevice implements BlockDevice {
  readonly format = 'raw';
  readonly backing = undefined;
  readonly size: number;
  private readonly starts: number[];

  constructor(
    readonly parts: BlockDevice[],
    readonly filename = parts.map((p) => p.filename).join('+'),
  ) {
    this.starts = [];
    let start = 0;
    for (const part of parts) {
      this.starts.push(start);
      start += part.size;
    }
    this.size = start;
  }

  private async forEachPart(offset: number, length: number, body: (part: BlockDevice, partOffset: number, at: number, n: number) => Promise<void>): Promise<void> {
    const end = offset + length;
    for (let i = 0; i < this.parts.length; i++) {
      const part = this.parts[i]!;
      const start = this.starts[i]!;
      const from = Math.max(offset, start);
      const to = Math.min(end, start + part.size);
      if (from < to) await body(part, from - start, from, to - from);
    }
  }

  async read(buffer: Uint8Array, offset: number): Promise<void> {
    checkRange(this, offset, buffer.length);
    await this.forEachPart(offset, buffer.length, (part, partOffset, at, n) => part.read(buffer.subarray(at - offset, at - offset + n), partOffset));
  }

  async extents(offset: number, length: number): Promise<Extent[]> {
    checkRange(this, offset, length);
    const out: Extent[] = [];
    await this.forEachPart(offset, length, async (part, partOffset, at) => {
      for (const extent of await part.extents(partOffset, Math.min(length - (at - offset), part.size - partOffset))) {
        pushExtent(out, { ...extent, offset: extent.offset - partOffset + at });
      }
    });
    return out;
  }

  async close(): Promise<void> {
    for (const part of this.parts) await part.close();
  }
}
