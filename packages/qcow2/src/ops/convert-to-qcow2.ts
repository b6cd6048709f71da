import type { BlockDevice } from '../device/block-device.js';
import type { Qcow2Device } from '../device/qcow2-device.js';
import { alignedDataRanges } from './aligned-ranges.js';
import type { RateLimiter } from './rate-limiter.js';
import { COPY_CHUNK, DEFAULT_COMPRESS_DEPTH, DEFAULT_COPY_DEPTH, copyPipeline } from './copy-pipeline.js';
import { firstDifference, isZero } from '../io/zero-detect.js';

/** Compresses one cluster; returns undefined when compression does not make it smaller than a cluster. */
export type ClusterCompressor = ((cluster: Uint8Array) => Promise<Uint8Array | undefined>) & {
  /** Optional: many clusters in one call (a worker pool then gets one message per chunk, not per cluster). */
  many?: (clusters: Uint8Array[]) => Promise<Array<Uint8Array | undefined>>;
};

/** Options of convertToQcow2: compression, backing file, progress. */
export interface ConvertToQcow2Options {
  /** Write compressed clusters (qemu-img convert -c) with this compressor. */
  compress?: ClusterCompressor;
  /**
   * The target's backing file (qemu-img convert -B): only clusters whose contents differ from it are written,
   * and clusters the source has as zeros over backing data become zero clusters.
   */
  backing?: BlockDevice;
  onProgress?: (done: number, total: number) => void;
  /**
   * qemu-img's -S: zero runs at least this long are left unallocated (default 4 KiB, which means whole clusters,
   * or whole subclusters with extended L2); longer values allocate shorter zero runs; 0 allocates every cluster.
   */
  sparseSize?: number;
  /** convert -r: bytes written per second. */
  rateLimiter?: RateLimiter;
  /** Requests in flight (qemu-img -m; default 8, with compression 4). */
  parallel?: number;
  /** Write chunks as they are read rather than in guest order (qemu-img -W): the host layout then varies. */
  outOfOrder?: boolean;
}

/**
 * Copies the guest contents of `source` into `target` (a fresh, writable qcow2 of the same size). Only source
 * extents holding data are read; target clusters that are all zeros are left unallocated (qemu-img's default
 * -S 4k never allocates a zero cluster in a qcow2 target). Runs of non-zero clusters become single writes, so
 * the writer allocates them contiguously; reads run ahead of the writes (see copyPipeline).
 */
export async function convertToQcow2(source: BlockDevice, target: Qcow2Device, options: ConvertToQcow2Options = {}): Promise<void> {
  if (options.backing !== undefined) {
    await convertOverBacking(source, target, options.backing, options);
    return;
  }
  const clusterSize = target.image.clusterSize;
  const total = source.size;
  const sparse = options.sparseSize ?? 4096;
  // -S 0 (without -c): every cluster is written, zeros included, so the whole disk is read.
  const everything = sparse === 0 && options.compress === undefined;
  const ranges = everything ? wholeDevice(total) : alignedDataRanges(source, clusterSize);
  const granularity = zeroGranularity(target);
  const blockSize = Math.ceil(Math.max(sparse, 1) / granularity) * granularity;
  // Chunks hold whole clusters and whole -S blocks (ranges start on cluster boundaries).
  const unit = Math.max(clusterSize, blockSize);
  const pipeline = {
    chunkSize: Math.ceil(COPY_CHUNK / unit) * unit,
    depth: options.parallel ?? (options.compress === undefined ? DEFAULT_COPY_DEPTH : DEFAULT_COMPRESS_DEPTH),
    outOfOrder: options.outOfOrder ?? false,
  };
  const compress = options.compress;
  await copyPipeline(
    source,
    ranges,
    pipeline,
    // Compression starts as soon as a chunk is read, several chunks at once (the compressor bounds its own
    // threads); the streams are stored in guest order, so the output does not depend on timing.
    (chunk) => (compress === undefined ? undefined : compressClusters(chunk, clusterSize, compress)),
    async (compressed, chunk, pos) => {
      let written = chunk.length;
      if (everything) await target.write(chunk, pos);
      else if (compressed === undefined) written = await writeNonZeroBlocks(target, chunk, pos, blockSize);
      else written = await storeClusters(target, pos, compressed);
      await options.rateLimiter?.take(written);
      options.onProgress?.(pos + chunk.length, total);
    },
  );
  await target.flush();
  options.onProgress?.(total, total);
}

/**
 * The size of the zero blocks a conversion leaves out: whole clusters, or with extended L2 whole subclusters
 * but never less than qemu-img's default -S 4k (qemu allocates only the subclusters holding data).
 */
function zeroGranularity(target: Qcow2Device): number {
  const { extendedL2, clusterSize, subclusterSize } = target.image.layout;
  return extendedL2 ? Math.min(clusterSize, Math.max(4096, subclusterSize)) : clusterSize;
}

async function* wholeDevice(size: number): AsyncGenerator<{ offset: number; length: number }> {
  if (size > 0) yield { offset: 0, length: size };
}

/** Writes the blocks of `chunk` that are not all zeros, runs of them as one write; returns the bytes written. */
async function writeNonZeroBlocks(target: Qcow2Device, chunk: Uint8Array, offset: number, blockSize: number): Promise<number> {
  let runStart = -1;
  let written = 0;
  for (let pos = 0; pos < chunk.length; pos += blockSize) {
    const zero = isZero(chunk.subarray(pos, pos + blockSize));
    if (!zero && runStart < 0) runStart = pos;
    if (zero && runStart >= 0) {
      await target.write(chunk.subarray(runStart, pos), offset + runStart);
      written += pos - runStart;
      runStart = -1;
    }
  }
  if (runStart >= 0) {
    await target.write(chunk.subarray(runStart), offset + runStart);
    written += chunk.length - runStart;
  }
  return written;
}

/** A non-zero cluster of a chunk and what to store for it: its compressed stream, or undefined (stored as is). */
interface CompressedCluster {
  at: number;
  data: Uint8Array;
  stored: Uint8Array | undefined;
}

/** Compresses the non-zero clusters of `chunk` (all at once: the compressor spreads them over its threads). */
async function compressClusters(chunk: Uint8Array, clusterSize: number, compress: ClusterCompressor): Promise<CompressedCluster[]> {
  const clusters: CompressedCluster[] = [];
  for (let pos = 0; pos < chunk.length; pos += clusterSize) {
    const data = chunk.subarray(pos, pos + clusterSize);
    if (!isZero(data)) clusters.push({ at: pos, data, stored: undefined });
  }
  // The short last cluster of a disk is compressed too, padded with the zeros it reads as (as qemu does).
  const inputs = clusters.map(({ data }) => (data.length === clusterSize ? data : padded(data, clusterSize)));
  const streams = compress.many !== undefined ? await compress.many(inputs) : await Promise.all(inputs.map((input) => compress(input)));
  streams.forEach((stored, i) => (clusters[i]!.stored = stored));
  return clusters;
}

/** Stores the clusters of one chunk in order: compressed streams, or the data when it did not shrink (as qemu). */
async function storeClusters(target: Qcow2Device, offset: number, clusters: CompressedCluster[]): Promise<number> {
  let written = 0;
  for (const { at, data, stored } of clusters) {
    if (stored === undefined) await target.write(data, offset + at);
    else await target.writeCompressed(offset + at, stored);
    written += data.length;
  }
  return written;
}

/**
 * convert -B: walks the ranges where the source or the backing file holds data (ranges empty in both need
 * nothing), compares cluster by cluster, and writes only the differences.
 */
async function convertOverBacking(source: BlockDevice, target: Qcow2Device, backing: BlockDevice, options: ConvertToQcow2Options): Promise<void> {
  const clusterSize = target.image.clusterSize;
  const chunkSize = Math.ceil(COPY_CHUNK / clusterSize) * clusterSize;
  const total = source.size;
  const sourceChunk = new Uint8Array(chunkSize);
  const backingChunk = new Uint8Array(chunkSize);
  const ranges = mergeRanges(
    (await collect(alignedDataRanges(source, clusterSize))).concat(
      (await collect(alignedDataRanges(backing, clusterSize))).filter((r) => r.offset < total).map((r) => ({ offset: r.offset, length: Math.min(r.length, total - r.offset) })),
    ),
  );
  for (const range of ranges) {
    const end = range.offset + range.length;
    for (let pos = range.offset; pos < end; pos += chunkSize) {
      const n = Math.min(chunkSize, end - pos);
      const src = sourceChunk.subarray(0, n);
      const base = backingChunk.subarray(0, n);
      await source.read(src, pos);
      const inBacking = Math.max(0, Math.min(n, backing.size - pos));
      if (inBacking > 0) await backing.read(base.subarray(0, inBacking), pos);
      base.fill(0, inBacking);
      for (let at = 0; at < n; at += clusterSize) {
        const a = src.subarray(at, at + clusterSize);
        const b = base.subarray(at, at + clusterSize);
        if (firstDifference(a, b) < 0) continue;
        if (isZero(a)) await target.writeZeroes(pos + at, a.length);
        else if (options.compress !== undefined && a.length === clusterSize) {
          const stored = await options.compress(a);
          if (stored === undefined) await target.write(a, pos + at);
          else await target.writeCompressed(pos + at, stored);
        } else await target.write(a, pos + at);
      }
      options.onProgress?.(pos + n, total);
    }
  }
  await target.flush();
  options.onProgress?.(total, total);
}

async function collect<T>(items: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const item of items) out.push(item);
  return out;
}

function mergeRanges(ranges: Array<{ offset: number; length: number }>): Array<{ offset: number; length: number }> {
  const sorted = ranges.filter((r) => r.length > 0).sort((a, b) => a.offset - b.offset);
  const out: Array<{ offset: number; length: number }> = [];
  for (const r of sorted) {
    const last = out[out.length - 1];
    if (last !== undefined && r.offset <= last.offset + last.length) last.length = Math.max(last.length, r.offset + r.length - last.offset);
    else out.push({ ...r });
  }
  return out;
}

function padded(data: Uint8Array, size: number): Uint8Array {
  const out = new Uint8Array(size);
  out.set(data);
  return out;
}
