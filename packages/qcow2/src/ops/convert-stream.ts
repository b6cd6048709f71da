import type { BlockDevice } from '../device/block-device.js';
import { createQcow2, type CreateQcow2Options } from '../engine/create-image.js';
import { layoutOf } from '../engine/image-layout.js';
import { Qcow2Error } from '../errors.js';
import { decodeHeader, encodeHeader } from '../format/header.js';
import { maxRefcount, refcountEntriesPerBlock, setRefcount } from '../format/refcount-block.js';
import { viewOf, writeU64 } from '../format/struct.js';
import { ALLOC_BITMAP_AT, ALL_SUBCLUSTERS, encodeCompressedDescriptor, setTableEntry } from '../format/table-entries.js';
import { MemoryStorage } from '../io/memory-storage.js';
import type { Storage } from '../io/storage.js';
import { alignedDataRanges } from './aligned-ranges.js';
import { AllocationLog } from './allocation-log.js';
import type { ClusterCompressor } from './convert-to-qcow2.js';
import { walkExtents } from './extent-walk.js';
import { readAhead } from './read-ahead.js';
import { DataRegionPacker, planStreamLayout, type StreamLayout } from './stream-layout.js';
import { isZero } from '../io/zero-detect.js';

/** Where a streamed image goes: bytes in order, never a seek (a pipe, a socket, an upload). */
export interface ByteSink {
  /** Resolves when `bytes` may be reused by the caller. */
  write(bytes: Uint8Array): Promise<void>;
}

/** Options of a conversion written to a stream. */
export interface ConvertStreamOptions {
  /** The new image's qcow2 options (cluster size, refcount width, compat, extended L2, compression type…). */
  image?: Omit<CreateQcow2Options, 'size' | 'backingFile' | 'backingFormat' | 'dataFile' | 'dataFileRaw'>;
  /** convert -c: compressed clusters. Their sizes are only known once compressed, so the data is spooled. */
  compress?: ClusterCompressor;
  /**
   * Scratch space for what cannot be known before the metadata is written: the allocation log (16 bytes per run
   * of clusters) and, with compression, the compressed data region. Memory by default; files under TMPDIR from
   * the CLI.
   */
  scratch?: { log: Storage; data: Storage };
  /** qemu-img's -S: zero runs at least this long (rounded up to clusters) are left out; 0 writes every cluster. */
  sparseSize?: number;
  /** Guest bytes planned (first pass), then output bytes written (second pass), out of source size + output size. */
  onProgress?: (done: number, total: number) => void;
}

const CHUNK = 4 * 1024 * 1024;
const READ_DEPTH = 4;

/**
 * Writes `source` as a qcow2 image to a sink in one forward pass. First pass: read the source's data extents
 * and note which clusters hold data (compressing them into scratch storage with -c). Then the layout is fixed
 * (see stream-layout.ts) and written in file order: header, refcount table and blocks, L1, L2 tables, data. The
 * uncompressed data is read from the source a second time, so the source must not change meanwhile.
 */
export async function convertToQcow2Stream(source: BlockDevice, sink: ByteSink, options: ConvertStreamOptions = {}): Promise<void> {
  const size = Math.ceil(source.size / 512) * 512;
  const template = await headerTemplate(size, options);
  const clusterSize = 2 ** template.clusterBits;
  const layoutInfo = layoutOf(template);
  const maxRef = maxRefcount(layoutInfo.refcountBits);
  const scratch = options.scratch ?? { log: new MemoryStorage(), data: new MemoryStorage() };
  const log = new AllocationLog(scratch.log, clusterSize);
  const progress = new ProgressTotal(size, options.onProgress);

  // Pass 1: what is allocated (and, compressed, where it goes).
  const packer = new DataRegionPacker(clusterSize, maxRef);
  if (options.compress === undefined) await planDataClusters(source, log, clusterSize, options.sparseSize ?? 4096, progress);
  else await spoolCompressed(source, log, packer, scratch.data, clusterSize, options.compress, progress);
  await log.finish();

  // The L2 tables needed: one for each L1 entry whose range holds an allocated cluster.
  const l1Entries = template.l1Size;
  const l2Used = new Uint8Array(l1Entries);
  let dataBytes = 0;
  {
    const replay = new DataRegionPacker(clusterSize, maxRef);
    for await (const record of log.records()) {
      for (let l1 = Math.floor(record.guestCluster / layoutInfo.l2Entries); l1 * layoutInfo.l2Entries < record.guestCluster + record.count; l1++) l2Used[l1] = 1;
      for (let i = 0; i < record.count; i++) replay.place(record.storedLength, record.storedLength < clusterSize);
    }
    // Compressed streams end the file at the end of their last sector (as qemu-img leaves it).
    dataBytes = options.compress === undefined ? Math.ceil(replay.end / clusterSize) * clusterSize : Math.ceil(replay.end / 512) * 512;
  }
  const l2Tables = l2Used.reduce((n, used) => n + used, 0);
  const layout = planStreamLayout(clusterSize, layoutInfo.refcountBits, l1Entries, l2Tables, dataBytes);
  progress.setOutput(layout.dataOffset + dataBytes);

  // Header.
  template.l1TableOffset = l1Entries === 0 ? 0 : layout.l1TableOffset;
  template.refcountTableOffset = layout.refcountTableOffset;
  template.refcountTableClusters = layout.refcountTableClusters;
  const cluster0 = new Uint8Array(clusterSize);
  cluster0.set(encodeHeader(template));
  await emit(sink, cluster0, progress);

  // Refcount table: block k sits at refcountBlocksOffset + k clusters.
  const table = new Uint8Array(layout.refcountTableClusters * clusterSize);
  for (let k = 0; k < layout.refcountBlocks; k++) writeU64(viewOf(table), k * 8, layout.refcountBlocksOffset + k * clusterSize);
  await emit(sink, table, progress);

  await emitRefcountBlocks(sink, layout, layoutInfo.refcountBits, dataClusterRefcounts(log, layout, maxRef, options.compress !== undefined), progress);

  // L1: the used entries point at the L2 tables, in order.
  if (layout.l1Clusters > 0) {
    const l1 = new Uint8Array(layout.l1Clusters * clusterSize);
    let next = layout.l2TablesOffset;
    for (let i = 0; i < l1Entries; i++) {
      if (l2Used[i] === 0) continue;
      setTableEntry(viewOf(l1), i * 8, next, true);
      next += clusterSize;
    }
    await emit(sink, l1, progress);
  }

  await emitL2Tables(sink, log, layout, layoutInfo.l2Entries, layoutInfo.l2EntryBytes, template.clusterBits, maxRef, progress);

  // Data region.
  if (options.compress === undefined) await emitDataClusters(source, sink, log, clusterSize, dataBytes, progress);
  else await copyScratch(scratch.data, sink, dataBytes, progress);
  progress.finish();
}

/** The header of a new image with these options, from the same code that creates images on disk. */
async function headerTemplate(size: number, options: ConvertStreamOptions) {
  const scratch = new MemoryStorage();
  await createQcow2(scratch, { ...(options.image ?? {}), size });
  const bytes = scratch.contents();
  return decodeHeader(bytes.subarray(0, Math.min(bytes.length, 2 ** 21)));
}

/** Pass 1 without compression: runs of clusters that hold something other than zeros. */
async function planDataClusters(source: BlockDevice, log: AllocationLog, clusterSize: number, sparseSize: number, progress: ProgressTotal): Promise<void> {
  if (sparseSize === 0) {
    // -S 0: every cluster is written.
    const clusters = Math.ceil(source.size / clusterSize);
    if (clusters > 0) await log.addClusters(0, clusters);
    progress.planned(source.size);
    return;
  }
  const blockSize = Math.ceil(sparseSize / clusterSize) * clusterSize;
  const chunkSize = Math.max(CHUNK, blockSize);
  await readAhead(source, alignedDataRanges(source, blockSize), chunkSize, READ_DEPTH, async (chunk, pos) => {
    for (let at = 0; at < chunk.length; at += blockSize) {
      const block = chunk.subarray(at, at + blockSize);
      if (!isZero(block)) await log.addClusters((pos + at) / clusterSize, Math.ceil(block.length / clusterSize));
    }
    progress.planned(pos + chunk.length);
  });
}

/** Pass 1 with compression: each non-zero cluster compressed (or kept whole) into the scratch data region. */
async function spoolCompressed(
  source: BlockDevice,
  log: AllocationLog,
  packer: DataRegionPacker,
  data: Storage,
  clusterSize: number,
  compress: ClusterCompressor,
  progress: ProgressTotal,
): Promise<void> {
  if ((await data.size()) > 0) await data.truncate(0);
  await readAhead(source, alignedDataRanges(source, clusterSize), Math.max(CHUNK, clusterSize), READ_DEPTH, async (chunk, pos) => {
    const clusters: Array<{ guestCluster: number; bytes: Uint8Array }> = [];
    for (let at = 0; at < chunk.length; at += clusterSize) {
      const bytes = chunk.subarray(at, at + clusterSize);
      if (isZero(bytes)) continue;
      // The short last cluster of a disk is stored whole, padded with the zeros it reads as.
      clusters.push({ guestCluster: (pos + at) / clusterSize, bytes: bytes.length === clusterSize ? bytes : padded(bytes, clusterSize) });
    }
    const compressed = await Promise.all(clusters.map(({ bytes }) => compress(bytes)));
    for (let i = 0; i < clusters.length; i++) {
      const { guestCluster, bytes } = clusters[i]!;
      const stream = compressed[i];
      // A cluster that does not shrink is stored as a plain data cluster, as qemu does.
      const stored = stream ?? bytes;
      await data.write(stored, packer.place(stored.length, stream !== undefined));
      if (stream === undefined) await log.addClusters(guestCluster, 1);
      else await log.addCompressed(guestCluster, stream.length);
    }
    progress.planned(pos + chunk.length);
  });
}

/**
 * Refcounts of the data region's clusters, in order, as [cluster index in the file, refcount]: 1 for a data
 * cluster, and for a compressed stream 1 on every cluster it touches (qemu-img check counts them so).
 */
async function* dataClusterRefcounts(log: AllocationLog, layout: StreamLayout, maxRef: number, compressed: boolean): AsyncGenerator<[number, number]> {
  const C = layout.clusterSize;
  const base = layout.metadataClusters;
  if (!compressed) {
    for (let c = 0; c < layout.dataClusters; c++) yield [base + c, 1];
    return;
  }
  const packer = new DataRegionPacker(C, maxRef);
  let open = -1;
  let refs = 0;
  for await (const record of log.records()) {
    for (let i = 0; i < record.count; i++) {
      const start = packer.place(record.storedLength, record.storedLength < C);
      const first = Math.floor(start / C);
      const last = Math.floor((start + record.storedLength - 1) / C);
      for (let c = first; c <= last; c++) {
        if (c === open) {
          refs++;
          continue;
        }
        if (open >= 0) yield [base + open, refs];
        open = c;
        refs = 1;
      }
    }
  }
  if (open >= 0) yield [base + open, refs];
}

async function emitRefcountBlocks(sink: ByteSink, layout: StreamLayout, refcountBits: number, data: AsyncGenerator<[number, number]>, progress: ProgressTotal): Promise<void> {
  const C = layout.clusterSize;
  const perBlock = refcountEntriesPerBlock(C, refcountBits);
  const block = new Uint8Array(C);
  const view = viewOf(block);
  let next = await data.next();
  for (let k = 0; k < layout.refcountBlocks; k++) {
    block.fill(0);
    const from = k * perBlock;
    const to = from + perBlock;
    for (let c = from; c < Math.min(to, layout.metadataClusters); c++) setRefcount(view, c - from, refcountBits, 1);
    while (!next.done && next.value[0] < to) {
      setRefcount(view, next.value[0] - from, refcountBits, next.value[1]);
      next = await data.next();
    }
    await emit(sink, block, progress);
  }
}

/** The L2 tables, in guest order: data clusters as COPIED standard entries, compressed ones as descriptors. */
async function emitL2Tables(
  sink: ByteSink,
  log: AllocationLog,
  layout: StreamLayout,
  l2Entries: number,
  l2EntryBytes: number,
  clusterBits: number,
  maxRef: number,
  progress: ProgressTotal,
): Promise<void> {
  const C = layout.clusterSize;
  const table = new Uint8Array(C);
  const view = viewOf(table);
  const packer = new DataRegionPacker(C, maxRef);
  let current = -1;
  for await (const record of log.records()) {
    for (let i = 0; i < record.count; i++) {
      const guestCluster = record.guestCluster + i;
      const compressed = record.storedLength < C;
      const host = layout.dataOffset + packer.place(record.storedLength, compressed);
      const l1Index = Math.floor(guestCluster / l2Entries);
      if (l1Index !== current) {
        if (current >= 0) await emit(sink, table, progress);
        table.fill(0);
        current = l1Index;
      }
      const at = (guestCluster % l2Entries) * l2EntryBytes;
      if (compressed) {
        const additionalSectors = Math.floor((host + record.storedLength - 1) / 512) - Math.floor(host / 512);
        const { hi, lo } = encodeCompressedDescriptor(host, additionalSectors, clusterBits);
        view.setUint32(at, hi);
        view.setUint32(at + 4, lo);
      } else {
        setTableEntry(view, at, host, true);
        // Extended L2: every subcluster of the cluster is allocated.
        if (l2EntryBytes === 16) view.setUint32(at + ALLOC_BITMAP_AT, ALL_SUBCLUSTERS);
      }
    }
  }
  if (current >= 0) await emit(sink, table, progress);
}

/** Pass 2 without compression: the allocated clusters read again and written in order. */
async function emitDataClusters(source: BlockDevice, sink: ByteSink, log: AllocationLog, clusterSize: number, dataBytes: number, progress: ProgressTotal): Promise<void> {
  let written = 0;
  async function* runs(): AsyncGenerator<{ offset: number; length: number }> {
    for await (const record of log.records()) yield { offset: record.guestCluster * clusterSize, length: record.count * clusterSize };
  }
  // Runs are whole clusters; the disk's last cluster may end short: it is padded with zeros.
  await readAhead(clampedDevice(source, clusterSize), runs(), CHUNK, READ_DEPTH, async (chunk) => {
    await emit(sink, chunk, progress);
    written += chunk.length;
  });
  if (written !== dataBytes) throw new Qcow2Error('IO_ERROR', `the source changed while it was being converted (${written} of ${dataBytes} data bytes)`, { file: source.filename });
}

/** The source seen as a whole number of clusters: reads past its end give zeros. */
function clampedDevice(source: BlockDevice, clusterSize: number): BlockDevice {
  const size = Math.ceil(source.size / clusterSize) * clusterSize;
  return {
    filename: source.filename,
    format: source.format,
    size,
    backing: source.backing,
    async read(buffer: Uint8Array, offset: number): Promise<void> {
      const inside = Math.max(0, Math.min(buffer.length, source.size - offset));
      if (inside > 0) await source.read(buffer.subarray(0, inside), offset);
      buffer.fill(0, inside);
    },
    extents: (offset, length) => source.extents(offset, Math.min(length, Math.max(0, source.size - offset))),
    close: () => source.close(),
  };
}

async function copyScratch(data: Storage, sink: ByteSink, length: number, progress: ProgressTotal): Promise<void> {
  const buffer = new Uint8Array(CHUNK);
  for (let at = 0; at < length; at += buffer.length) {
    const part = buffer.subarray(0, Math.min(buffer.length, length - at));
    const n = await data.read(part, at);
    part.fill(0, n); // the last stream's sector ends in zeros
    await emit(sink, part, progress);
  }
}

function padded(data: Uint8Array, size: number): Uint8Array {
  const out = new Uint8Array(size);
  out.set(data);
  return out;
}

async function emit(sink: ByteSink, bytes: Uint8Array, progress: ProgressTotal): Promise<void> {
  await sink.write(bytes);
  progress.wrote(bytes.length);
}

/** Progress over both passes: the source's bytes planned, then the output's bytes written. */
class ProgressTotal {
  private plannedBytes = 0;
  private writtenBytes = 0;
  private outputBytes = 0;

  constructor(
    private readonly sourceBytes: number,
    private readonly report: ((done: number, total: number) => void) | undefined,
  ) {}

  planned(upTo: number): void {
    this.plannedBytes = upTo;
    this.tell();
  }
  setOutput(bytes: number): void {
    this.plannedBytes = this.sourceBytes;
    this.outputBytes = bytes;
    this.tell();
  }
  wrote(bytes: number): void {
    this.writtenBytes += bytes;
    this.tell();
  }
  finish(): void {
    this.report?.(this.sourceBytes + this.outputBytes, this.sourceBytes + this.outputBytes);
  }
  private tell(): void {
    // Until the output's size is known, count it as the source's size.
    const output = this.outputBytes > 0 ? this.outputBytes : this.sourceBytes;
    this.report?.(this.plannedBytes + this.writtenBytes, this.sourceBytes + output);
  }
}

/**
 * Writes `source` as a raw image to a sink: its guest bytes in order, zeros included (a pipe has no holes).
 * Only data extents are read; zero ranges are written from one buffer of zeros.
 */
export async function convertToRawStream(source: BlockDevice, sink: ByteSink, onProgress?: (done: number, total: number) => void): Promise<void> {
  const total = source.size;
  const zeros = new Uint8Array(Math.min(CHUNK, Math.max(total, 1)));
  let done = 0;
  const writeZerosUntil = async (end: number): Promise<void> => {
    while (done < end) {
      const n = Math.min(zeros.length, end - done);
      await sink.write(zeros.subarray(0, n));
      done += n;
      onProgress?.(done, total);
    }
  };
  async function* dataRanges(): AsyncGenerator<{ offset: number; length: number }> {
    for await (const extent of walkExtents(source)) {
      if (extent.kind === 'data' && extent.zeroData !== true) yield { offset: extent.offset, length: extent.length };
    }
  }
  await readAhead(source, dataRanges(), CHUNK, READ_DEPTH, async (chunk, offset) => {
    await writeZerosUntil(offset);
    await sink.write(chunk);
    done = offset + chunk.length;
    onProgress?.(done, total);
  });
  await writeZerosUntil(total);
}
