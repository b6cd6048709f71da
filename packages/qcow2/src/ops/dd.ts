import type { BlockDevice, WritableBlockDevice } from '../device/block-device.js';
import { readAhead } from './read-ahead.js';

/** qemu-img dd's operands, in bytes and blocks. */
export interface DdOptions {
  /** Block size in bytes (bs=, default 512). */
  blockSize: number;
  /** count=: blocks; qemu-img counts them from the start of the input, not from skip. */
  count?: number;
  /** skip=: blocks of input to skip. */
  skip?: number;
}

/** A qemu-img dd job's ranges, from its operands. */
export interface DdPlan {
  /** First input byte copied. */
  inputOffset: number;
  /** Bytes copied, which is also the output's size. */
  length: number;
  /** skip= lies past the end of the input: qemu-img warns and makes an empty output, like dd(1). */
  skipPastEnd: boolean;
}

/**
 * What qemu-img dd copies from an input of `inputSize` bytes: count= caps the input at count*bs bytes from its
 * start (so skip=1 count=3 copies two blocks, as qemu-img does), then skip= moves the start.
 */
export function ddPlan(inputSize: number, options: DdOptions): DdPlan {
  const bs = options.blockSize;
  let end = inputSize;
  if (options.count !== undefined && options.count * bs < end) end = options.count * bs;
  const start = (options.skip ?? 0) * bs;
  if (!Number.isSafeInteger(start) || start > end) return { inputOffset: end, length: 0, skipPastEnd: true };
  return { inputOffset: start, length: end - start, skipPastEnd: false };
}

const CHUNK = 4 * 1024 * 1024;
const READ_DEPTH = 4;

/**
 * Copies plan.length bytes from `source` at plan.inputOffset to `target` at 0, every byte (dd writes what it
 * reads, zeros included, so a qcow2 output is fully allocated as qemu-img dd makes it). Blocks of bs bytes are
 * gathered into chunks of about 4 MiB: the output is the same as block by block, without a promise per block.
 */
export async function ddCopy(
  source: BlockDevice,
  target: WritableBlockDevice,
  plan: DdPlan,
  blockSize: number,
  onProgress?: (done: number, total: number) => void,
): Promise<void> {
  const chunk = Math.max(blockSize, Math.floor(CHUNK / blockSize) * blockSize);
  // Past the input's end the source reads nothing: the ranges stop there.
  const readable = Math.max(0, Math.min(plan.length, source.size - plan.inputOffset));
  async function* ranges(): AsyncGenerator<{ offset: number; length: number }> {
    if (readable > 0) yield { offset: plan.inputOffset, length: readable };
  }
  await readAhead(source, ranges(), chunk, READ_DEPTH, async (bytes, offset) => {
    await target.write(bytes, offset - plan.inputOffset);
    onProgress?.(offset - plan.inputOffset + bytes.length, plan.length);
  });
  await target.flush();
  onProgress?.(plan.length, plan.length);
}
