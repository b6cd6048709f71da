import type { BlockDevice } from '../device/block-device.js';
import type { Storage } from '../io/storage.js';
import { walkExtents } from './extent-walk.js';
import { COPY_CHUNK, DEFAULT_COPY_DEPTH, copyPipeline } from './copy-pipeline.js';
import type { RateLimiter } from './rate-limiter.js';
import { isZero } from '../io/zero-detect.js';

/** Options of convertToRaw: sparseness, progress, flush. */
export interface ConvertToRawOptions {
  /** Zero runs at least this long (and aligned to it) are left as holes; qemu-img's -S, default 4 KiB. 0 = write every byte. */
  sparseSize?: number;
  onProgress?: (done: number, total: number) => void;
  /** fsync the target at the end (qemu-img's -t writeback); default true. */
  flush?: boolean;
  /** convert -n: the target exists and keeps its length (it must be at least the source's); nothing is truncated. */
  keepTarget?: boolean;
  /** convert -r: bytes written per second. */
  rateLimiter?: RateLimiter;
  /** Requests in flight (qemu-img -m, default 8). */
  parallel?: number;
  /** Write chunks as they are read rather than in guest order (qemu-img -W). */
  outOfOrder?: boolean;
}

/**
 * Writes the guest contents of `source` into `target` as a raw image. The target is emptied and sized first, so
 * everything not written is a hole: only extents holding data are read at all, and zero runs inside them are
 * skipped too. Reads run ahead of the writes (see copyPipeline).
 */
export async function convertToRaw(source: BlockDevice, target: Storage, options: ConvertToRawOptions = {}): Promise<void> {
  const total = source.size;
  // Empty first so every byte not written is a hole; skip when already empty (truncating an empty file to
  // zero still makes ext4 flush it on close).
  if (!options.keepTarget) {
    if ((await target.size()) > 0) await target.truncate(0);
    await target.truncate(total);
  }
  await copyGuestData(source, target, options);
  if (options.flush ?? true) await target.flush();
  options.onProgress?.(total, total);
}

/**
 * Copies the guest data of `source` into `target` at the same offsets, in increasing order: only extents holding
 * data are read (reads running ahead of the writes, see copyPipeline), and aligned zero runs of `sparseSize` inside
 * them are left out. Progress is reported as the copy advances (not its end).
 */
export async function copyGuestData(
  source: BlockDevice,
  target: Pick<Storage, 'write'>,
  options: Pick<ConvertToRawOptions, 'sparseSize' | 'onProgress' | 'rateLimiter' | 'parallel' | 'outOfOrder'>,
): Promise<void> {
  const sparse = options.sparseSize ?? 4096;
  const total = source.size;
  const dataRanges = async function* () {
    // -S 0: every byte is written, so the output is fully allocated (as qemu-img does).
    if (sparse === 0) {
      if (total > 0) yield { offset: 0, length: total };
      return;
    }
    for await (const extent of walkExtents(source)) {
      if (extent.kind === 'data' && extent.zeroData !== true) yield { offset: extent.offset, length: extent.length };
      else options.onProgress?.(extent.offset + extent.length, total);
    }
  };
  // Chunks hold whole -S blocks, so a zero run that long is never split between two chunks.
  const chunkSize = sparse > COPY_CHUNK ? Math.ceil(COPY_CHUNK / sparse) * sparse : COPY_CHUNK;
  const pipeline = { chunkSize, depth: options.parallel ?? DEFAULT_COPY_DEPTH, outOfOrder: options.outOfOrder ?? false };
  await copyPipeline(source, dataRanges(), pipeline, () => undefined, async (_, chunk, offset) => {
    const written = await writeNonZeroRuns(target, chunk, offset, sparse);
    await options.rateLimiter?.take(written);
    options.onProgress?.(offset + chunk.length, total);
  });
}

/**
 * Writes `chunk` at `offset`, leaving out aligned runs of `sparse` zero bytes (they are holes already). Returns the
 * bytes written.
 */
export async function writeNonZeroRuns(target: Pick<Storage, 'write'>, chunk: Uint8Array, offset: number, sparse: number): Promise<number> {
  if (sparse === 0) {
    await target.write(chunk, offset);
    return chunk.length;
  }
  let written = 0;
  let runStart = -1;
  // Blocks are aligned to guest offsets, so holes line up with file system blocks.
  let pos = 0;
  while (pos < chunk.length) {
    const blockEnd = Math.min(chunk.length, (Math.floor((offset + pos) / sparse) + 1) * sparse - offset);
    const block = chunk.subarray(pos, blockEnd);
    const zero = block.length === sparse && isZero(block);
    if (!zero && runStart < 0) runStart = pos;
    if (zero && runStart >= 0) {
      await target.write(chunk.subarray(runStart, pos), offset + runStart);
      written += pos - runStart;
      runStart = -1;
    }
    pos = blockEnd;
  }
  if (runStart >= 0) {
    await target.write(chunk.subarray(runStart), offset + runStart);
    written += chunk.length - runStart;
  }
  return written;
}
