import type { BlockDevice } from '../device/block-device.js';

/**
 * Reads a sequence of guest ranges with several reads in flight while the caller consumes them in order, so
 * reading the next chunks overlaps with writing the current one (qemu-img convert keeps 8 requests in flight).
 * With blocking storage the reads simply run one after the other. Buffers are reused: a chunk's bytes are valid
 * until the consumer's callback for it returns.
 */
export async function readAhead(
  device: BlockDevice,
  ranges: AsyncIterable<{ offset: number; length: number }>,
  chunkSize: number,
  depth: number,
  consume: (chunk: Uint8Array, offset: number) => Promise<void>,
): Promise<void> {
  const pool: Uint8Array[] = [];
  const pending: Array<Promise<{ chunk: Uint8Array; offset: number; buffer: Uint8Array }>> = [];
  const take = (): Uint8Array => pool.pop() ?? new Uint8Array(chunkSize);
  const drainOne = async (): Promise<void> => {
    const { chunk, offset, buffer } = await pending.shift()!;
    await consume(chunk, offset);
    pool.push(buffer);
  };
  try {
    for await (const range of ranges) {
      const end = range.offset + range.length;
      for (let pos = range.offset; pos < end; pos += chunkSize) {
        const buffer = take();
        const chunk = buffer.subarray(0, Math.min(chunkSize, end - pos));
        const at = pos;
        pending.push(device.read(chunk, at).then(() => ({ chunk, offset: at, buffer })));
        if (pending.length >= depth) await drainOne();
      }
    }
    while (pending.length > 0) await drainOne();
  } catch (error) {
    // Let the reads still in flight finish before the caller closes the files under them; their own failures
    // are secondary to the first one.
    await Promise.allSettled(pending.splice(0));
    throw error;
  }
}
