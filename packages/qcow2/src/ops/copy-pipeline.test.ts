import { describe, expect, it } from 'vitest';
import type { BlockDevice, Extent } from '../device/block-device.js';
import { MAX_BYTES_IN_FLIGHT, copyPipeline } from './copy-pipeline.js';

/** A device whose bytes are their offset mod 251, whose reads finish in a scrambled order, and that counts reads in flight. */
class SlowDevice implements BlockDevice {
  readonly filename = 'slow';
  readonly format = 'raw';
  readonly backing = undefined;
  inFlight = 0;
  maxInFlight = 0;
  private calls = 0;
  constructor(
    readonly size: number,
    private readonly failAt = -1,
  ) {}
  async read(buffer: Uint8Array, offset: number): Promise<void> {
    this.inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    // Later reads may finish first: 0..3 timer turns, a fixed pattern.
    await new Promise((resolve) => setTimeout(resolve, (this.calls++ * 7) % 4));
    this.inFlight--;
    if (offset === this.failAt) throw new Error(`read error at ${offset}`);
    for (let i = 0; i < buffer.length; i++) buffer[i] = (offset + i) % 251;
  }
  async extents(offset: number, length: number): Promise<Extent[]> {
    return [{ offset, length, kind: 'data', depth: 0 }];
  }
  async close(): Promise<void> {}
}

const ranges = [
  { offset: 0, length: 10_000 },
  { offset: 20_000, length: 3_000 },
];

function expectBytes(chunk: Uint8Array, offset: number): void {
  for (let i = 0; i < chunk.length; i++) if (chunk[i] !== (offset + i) % 251) throw new Error(`byte ${offset + i} wrong`);
}

describe('copyPipeline', () => {
  it('commits every chunk in guest order, with the chunk prepared from its own bytes', async () => {
    const device = new SlowDevice(30_000);
    const seen: Array<[number, number, number]> = [];
    await copyPipeline(device, ranges, { chunkSize: 1024, depth: 4 }, (chunk) => chunk[0]!, async (first, chunk, offset) => {
      expectBytes(chunk, offset);
      seen.push([offset, chunk.length, first]);
    });
    const expected: Array<[number, number, number]> = [];
    for (const r of ranges) for (let at = r.offset; at < r.offset + r.length; at += 1024) expected.push([at, Math.min(1024, r.offset + r.length - at), at % 251]);
    expect(seen).toEqual(expected);
    expect(device.maxInFlight).toBe(4);
  });

  it('with outOfOrder commits every chunk once, in completion order', async () => {
    const device = new SlowDevice(30_000);
    const seen: number[] = [];
    await copyPipeline(device, ranges, { chunkSize: 1024, depth: 8, outOfOrder: true }, () => undefined, async (_, chunk, offset) => {
      expectBytes(chunk, offset);
      seen.push(offset);
    });
    const offsets = [...seen].sort((a, b) => a - b);
    expect(offsets).toEqual([...new Set(offsets)]);
    expect(offsets.length).toBe(10 + 3);
    expect(seen).not.toEqual(offsets); // the scrambled reads really were committed out of order
  });

  it('keeps the bytes in flight bounded whatever the depth asked for', async () => {
    const chunkSize = MAX_BYTES_IN_FLIGHT / 4;
    const device = new SlowDevice(chunkSize * 6);
    await copyPipeline(device, [{ offset: 0, length: chunkSize * 6 }], { chunkSize, depth: 16 }, () => undefined, async () => {});
    expect(device.maxInFlight).toBe(4);
  });

  it('fails with the first error, after the reads still in flight have settled', async () => {
    const device = new SlowDevice(30_000, 2048);
    const committed: number[] = [];
    await expect(
      copyPipeline(device, ranges, { chunkSize: 1024, depth: 4 }, () => undefined, async (_, __, offset) => {
        committed.push(offset);
      }),
    ).rejects.toThrow('read error at 2048');
    expect(committed).toEqual([0, 1024]);
    expect(device.inFlight).toBe(0);
  });
});
