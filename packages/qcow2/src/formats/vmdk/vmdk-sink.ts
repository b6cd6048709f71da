import type { ImageSink } from '../../device/image-sink.js';
import { Qcow2Error } from '../../errors.js';
import { viewOf } from '../../format/struct.js';
import type { Storage } from '../../io/storage.js';
import { formatDescriptor, type VmdkAdapterType } from './descriptor.js';
import { portableGrainCompressor, type GrainCompressor } from './grain-compression.js';
import { encodeSparseHeader, GD_AT_END_MARK, VMDK_COMPRESSION_DEFLATE, VMDK_SECTOR, VmdkFlag, type VmdkSparseHeader } from './sparse-header.js';
import { grainRecord, MarkerType, metadataMarker } from './stream-markers.js';

export interface VmdkCreateOptions {
  /** Virtual size in bytes (rounded up to whole sectors, as qemu does). */
  size: number;
  /** 'monolithicSparse' (default): grain tables up front, whole grains; 'streamOptimized': compressed, front to back. */
  subformat?: 'monolithicSparse' | 'streamOptimized';
  /** The adapter the descriptor names (default 'ide'); VMware's geometry uses 255 heads for the others. */
  adapterType?: VmdkAdapterType;
  /** ddb.virtualHWVersion (default "4"; compat6 makes it "6"). */
  hwVersion?: string;
  compat6?: boolean;
  /** ddb.toolsVersion (default "2147483647", as qemu). */
  toolsVersion?: string;
  /** Header flag: grain table entry 1 means a zeroed grain (monolithicSparse; header version 2). */
  zeroedGrain?: boolean;
  /** Compresses a grain into a zlib stream (streamOptimized); default: fflate's, in any JS host. */
  compressGrain?: GrainCompressor;
  /** The descriptor's CID (default: random). */
  cid?: number;
  /** The file name the descriptor's extent line gives (default: the storage name without its directory). */
  extentFileName?: string;
}

const GRAIN_SECTORS = 128;
const GRAIN_SIZE = GRAIN_SECTORS * VMDK_SECTOR;
const GTES_PER_GT = 512;
const GT_SECTORS = (GTES_PER_GT * 4) / VMDK_SECTOR;
const DESCRIPTOR_OFFSET = 1;
const DESCRIPTOR_SECTORS = 20;
/** Grain sectors are u32 in the tables: a sparse extent ends at 2 TiB of file. */
const MAX_SECTOR = 0xffffffff;
/** Complete grains compressed together (in parallel where the compressor can) before they are written in order. */
const COMPRESS_BATCH = 64;

/** The virtual size a new VMDK gets (whole sectors). */
export function vmdkCreatedSize(size: number): number {
  return Math.ceil(size / VMDK_SECTOR) * VMDK_SECTOR;
}

function baseName(name: string): string {
  return name.slice(name.lastIndexOf('/') + 1);
}

function descriptorFor(options: VmdkCreateOptions, filename: string, createType: string): Uint8Array {
  if (options.compat6 && options.hwVersion !== undefined) throw new Qcow2Error('BAD_ARGUMENT', 'compat6 cannot be enabled with hwversion set');
  const size = vmdkCreatedSize(options.size);
  const text = formatDescriptor({
    cid: options.cid ?? globalThis.crypto.getRandomValues(new Uint32Array(1))[0]!,
    createType,
    extents: [{ sectors: size / VMDK_SECTOR, type: 'SPARSE', fileName: options.extentFileName ?? baseName(filename) }],
    size,
    hwVersion: options.compat6 ? '6' : (options.hwVersion ?? '4'),
    adapterType: options.adapterType ?? 'ide',
    toolsVersion: options.toolsVersion ?? '2147483647',
  });
  const bytes = new TextEncoder().encode(text);
  if (bytes.length > DESCRIPTOR_SECTORS * VMDK_SECTOR) throw new Qcow2Error('BAD_ARGUMENT', 'VMDK descriptor too long');
  return bytes;
}

/**
 * Starts a new VMDK (monolithicSparse or streamOptimized) in `storage`, emptied first, and returns the sink that
 * fills it.
 *
 * Write order (crash safety): the header sector, the only thing that makes the file a VMDK, is written last.
 * Until finish() sector 0 holds zeros, so a convert killed halfway leaves a file that qemu probes as raw and
 * refuses as vmdk ("invalid VMDK image descriptor"); once the header is there, everything it points to is.
 */
export async function createVmdk(storage: Storage, options: VmdkCreateOptions, filename = storage.name): Promise<ImageSink> {
  const subformat = options.subformat ?? 'monolithicSparse';
  const descriptor = descriptorFor(options, filename, subformat);
  if ((await storage.size()) > 0) await storage.truncate(0);
  await storage.write(descriptor, DESCRIPTOR_OFFSET * VMDK_SECTOR);
  const size = vmdkCreatedSize(options.size);
  return subformat === 'streamOptimized'
    ? new StreamOptimizedSink(filename, storage, size, options.compressGrain ?? portableGrainCompressor())
    : MonolithicSparseSink.start(filename, storage, size, options.zeroedGrain ?? false);
}

/** Collects guest writes (increasing offsets) into whole grains, handing each grain on once it is complete. */
abstract class GrainCollector implements ImageSink {
  private pending: { index: number; bytes: Uint8Array } | undefined;

  constructor(
    readonly filename: string,
    protected readonly storage: Storage,
    readonly size: number,
  ) {}

  /** Stores one whole grain (zero-padded past its data), the grains coming in increasing index order. */
  protected abstract storeGrain(index: number, grain: Uint8Array): Promise<void>;
  protected abstract finishImage(flush: boolean): Promise<void>;

  async write(data: Uint8Array, offset: number): Promise<void> {
    const end = Math.min(offset + data.length, this.size);
    for (let at = offset; at < end; ) {
      const index = Math.floor(at / GRAIN_SIZE);
      const inGrain = at - index * GRAIN_SIZE;
      const n = Math.min(end - at, GRAIN_SIZE - inGrain);
      if (this.pending?.index !== index) {
        if (this.pending !== undefined) await this.storeGrain(this.pending.index, this.pending.bytes);
        this.pending = { index, bytes: new Uint8Array(GRAIN_SIZE) };
      }
      this.pending.bytes.set(data.subarray(at - offset, at - offset + n), inGrain);
      at += n;
    }
  }

  async finish(options: { flush?: boolean } = {}): Promise<void> {
    if (this.pending !== undefined) await this.storeGrain(this.pending.index, this.pending.bytes);
    this.pending = undefined;
    await this.finishImage(options.flush ?? true);
  }

  async close(): Promise<void> {
    await this.storage.close();
  }
}

function tableBytes(entries: Uint32Array): Uint8Array {
  const bytes = new Uint8Array(Math.ceil((entries.length * 4) / VMDK_SECTOR) * VMDK_SECTOR);
  const view = viewOf(bytes);
  entries.forEach((entry, i) => view.setUint32(i * 4, entry, true));
  return bytes;
}

function nextSector(sector: number): number {
  if (sector > MAX_SECTOR) throw new Qcow2Error('BAD_ARGUMENT', 'VMDK sparse extent full: grains past 2 TiB of file');
  return sector;
}

/**
 * monolithicSparse, laid out as qemu lays it out: header, descriptor (20 sectors), redundant grain directory and
 * its grain tables, grain directory and its grain tables, then 64 KiB grains from a 64 KiB boundary, in guest
 * order. Grain tables are preallocated, so each is written (both copies) once its grains are placed.
 */
class MonolithicSparseSink extends GrainCollector {
  private table: { index: number; entries: Uint32Array } | undefined;
  private nextGrainSector: number;

  private constructor(
    filename: string,
    storage: Storage,
    size: number,
    private readonly header: VmdkSparseHeader,
    private readonly gdSectors: number,
  ) {
    super(filename, storage, size);
    this.nextGrainSector = header.overhead;
  }

  static async start(filename: string, storage: Storage, size: number, zeroedGrain: boolean): Promise<MonolithicSparseSink> {
    const capacity = size / VMDK_SECTOR;
    const grains = Math.ceil(capacity / GRAIN_SECTORS);
    const gtCount = Math.ceil(grains / GTES_PER_GT);
    const gdSectors = Math.ceil((gtCount * 4) / VMDK_SECTOR);
    const rgdOffset = DESCRIPTOR_OFFSET + DESCRIPTOR_SECTORS;
    const gdOffset = rgdOffset + gdSectors + GT_SECTORS * gtCount;
    const overhead = Math.ceil((gdOffset + gdSectors + GT_SECTORS * gtCount) / GRAIN_SECTORS) * GRAIN_SECTORS;
    const header: VmdkSparseHeader = {
      version: zeroedGrain ? 2 : 1,
      flags: VmdkFlag.NewlineDetect | VmdkFlag.RedundantGrainDirectory | (zeroedGrain ? VmdkFlag.ZeroedGrain : 0),
      capacity,
      grainSectors: GRAIN_SECTORS,
      descriptorOffset: DESCRIPTOR_OFFSET,
      descriptorSectors: DESCRIPTOR_SECTORS,
      gtesPerGt: GTES_PER_GT,
      rgdOffset,
      gdOffset,
      overhead,
      uncleanShutdown: 0,
      compressAlgorithm: 0,
    };
    // Both directories point at their (still empty) tables; the tables themselves are holes until written.
    for (const directory of [rgdOffset, gdOffset]) {
      const entries = new Uint32Array(gtCount).map((_, i) => directory + gdSectors + i * GT_SECTORS);
      await storage.write(tableBytes(entries), directory * VMDK_SECTOR);
    }
    await storage.truncate(overhead * VMDK_SECTOR);
    return new MonolithicSparseSink(filename, storage, size, header, gdSectors);
  }

  protected async storeGrain(index: number, grain: Uint8Array): Promise<void> {
    const sector = nextSector(this.nextGrainSector);
    await this.storage.write(grain, sector * VMDK_SECTOR);
    this.nextGrainSector += GRAIN_SECTORS;
    const tableIndex = Math.floor(index / GTES_PER_GT);
    if (this.table?.index !== tableIndex) {
      await this.writeTable();
      this.table = { index: tableIndex, entries: new Uint32Array(GTES_PER_GT) };
    }
    this.table.entries[index % GTES_PER_GT] = sector;
  }

  /** Writes the current grain table into both of its preallocated places. */
  private async writeTable(): Promise<void> {
    if (this.table === undefined) return;
    const bytes = tableBytes(this.table.entries);
    for (const directory of [this.header.rgdOffset, this.header.gdOffset as number]) {
      await this.storage.write(bytes, (directory + this.gdSectors + this.table.index * GT_SECTORS) * VMDK_SECTOR);
    }
  }

  protected async finishImage(flush: boolean): Promise<void> {
    await this.writeTable();
    if (flush) await this.storage.flush();
    await this.storage.write(encodeSparseHeader(this.header), 0);
    if (flush) await this.storage.flush();
  }
}

/**
 * streamOptimized as the VMDK specification lays it out for streaming (what VMware's OVF tools write and
 * vSphere imports): header with the grain directory "at the end", descriptor, then compressed grains with
 * their markers in guest order, each grain table (with its marker) after its grains, the grain directory, the
 * footer (a copy of the header that says where the directory is) and the end-of-stream marker. Nothing is
 * written twice or read back; only the header sector is written last, over the zeros it starts as.
 */
class StreamOptimizedSink extends GrainCollector {
  private readonly directory: Uint32Array;
  private table: { index: number; entries: Uint32Array } | undefined;
  private nextSector = GRAIN_SECTORS;
  private batch: Array<{ index: number; grain: Uint8Array }> = [];
  private readonly header: VmdkSparseHeader;

  constructor(
    filename: string,
    storage: Storage,
    size: number,
    private readonly compress: GrainCompressor,
  ) {
    super(filename, storage, size);
    const capacity = size / VMDK_SECTOR;
    this.directory = new Uint32Array(Math.ceil(Math.ceil(capacity / GRAIN_SECTORS) / GTES_PER_GT));
    this.header = {
      version: 3,
      flags: VmdkFlag.NewlineDetect | VmdkFlag.CompressedGrains | VmdkFlag.Markers,
      capacity,
      grainSectors: GRAIN_SECTORS,
      descriptorOffset: DESCRIPTOR_OFFSET,
      descriptorSectors: DESCRIPTOR_SECTORS,
      gtesPerGt: GTES_PER_GT,
      rgdOffset: 0,
      gdOffset: GD_AT_END_MARK,
      overhead: GRAIN_SECTORS,
      uncleanShutdown: 0,
      compressAlgorithm: VMDK_COMPRESSION_DEFLATE,
    };
  }

  protected async storeGrain(index: number, grain: Uint8Array): Promise<void> {
    this.batch.push({ index, grain });
    if (this.batch.length >= COMPRESS_BATCH) await this.writeBatch();
  }

  private async writeBatch(): Promise<void> {
    const batch = this.batch;
    this.batch = [];
    const compressed = await Promise.all(batch.map(({ grain }) => this.compress(grain)));
    for (let i = 0; i < batch.length; i++) {
      const index = batch[i]!.index;
      const tableIndex = Math.floor(index / GTES_PER_GT);
      if (this.table?.index !== tableIndex) {
        await this.writeTable();
        this.table = { index: tableIndex, entries: new Uint32Array(GTES_PER_GT) };
      }
      const record = grainRecord(index * GRAIN_SECTORS, compressed[i]!);
      await this.append(record, (sector) => (this.table!.entries[index % GTES_PER_GT] = sector));
    }
  }

  /** Appends `bytes` (whole sectors) to the stream; `placed` learns the sector where they start. */
  private async append(bytes: Uint8Array, placed?: (sector: number) => void): Promise<void> {
    const sector = nextSector(this.nextSector);
    await this.storage.write(bytes, sector * VMDK_SECTOR);
    placed?.(sector);
    this.nextSector += bytes.length / VMDK_SECTOR;
  }

  /** The current grain table, after its marker; its sector goes into the directory. */
  private async writeTable(): Promise<void> {
    if (this.table === undefined) return;
    await this.append(metadataMarker(MarkerType.GrainTable, GT_SECTORS));
    const index = this.table.index;
    await this.append(tableBytes(this.table.entries), (sector) => (this.directory[index] = sector));
    this.table = undefined;
  }

  protected async finishImage(flush: boolean): Promise<void> {
    await this.writeBatch();
    await this.writeTable();
    const directory = tableBytes(this.directory);
    await this.append(metadataMarker(MarkerType.GrainDirectory, directory.length / VMDK_SECTOR));
    let gdSector = 0;
    await this.append(directory, (sector) => (gdSector = sector));
    await this.append(metadataMarker(MarkerType.Footer, 1));
    await this.append(encodeSparseHeader({ ...this.header, gdOffset: gdSector }));
    await this.append(metadataMarker(MarkerType.EndOfStream, 0));
    if (flush) await this.storage.flush();
    await this.storage.write(encodeSparseHeader(this.header), 0);
    if (flush) await this.storage.flush();
  }
}
