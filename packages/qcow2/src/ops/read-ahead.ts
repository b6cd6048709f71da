import type { BlockDevice } from '../device/block-device.js';
import { copyPipeline } from './copy-pipeline.js';

/**
 * Reads a sequence of guest ranges with several reads in flight while the caller consumes them in order, so
 * reading the next chunks overlaps with writing the current one (qemu-img convert keeps 8 requests in flight).
 * Buffers are reused: a chunk's bytes are valid until the consumer's callback for it returns. A copyPipeline
 * without a prepare stage.
 */
export async function readAhead(
  device: BlockDevice,
  ranges: AsyncIterable<{ offset: number; length: number }>,
  chunkSize: number,
  depth: number,
  consume: (chunk: Uint8Array, offset: number) => Promise<void>,
): Promise<void> {
  await copyPipeline(device, ranges, { chunkSize, depth }, () => undefined, (_, chunk, offset) => consume(chunk, offset));
}
