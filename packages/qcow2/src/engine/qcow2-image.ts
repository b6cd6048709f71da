import { Qcow2Error } from '../errors.js';
import { AutoclearFeature, CompatibleFeature, IncompatibleFeature } from '../format/constants.js';
import {
  backingFormatOf,
  bitmapsExtensionOf,
  dataFileNameOf,
  featureNamesOf,
  type BitmapsExtension,
  type FeatureName,
} from '../format/header-extensions.js';
import { HEADER_PROBE_BYTES, decodeHeader, hasBit, probeClusterBits, type Qcow2Header } from '../format/header.js';
import type { SnapshotEntry } from '../format/snapshot-table.js';
import { readZeroPadded, type Storage } from '../io/storage.js';
import { decompressCluster, type CompressionCodecs } from './compression.js';
import { layoutOf, validateForIo, validateHeader, type ImageLayout } from './image-layout.js';
import { TableCache } from './l2-cache.js';
import { l1TableFrom, mapGuestRange, type L1Table } from './mapping.js';
import { SegmentKind, type Segment } from './segments.js';
import { loadSnapshotTable } from './snapshot-loader.js';
import { portableCodecs } from './portable-codecs.js';

/** Options of Qcow2Image.open: codecs, L2 cache bound, and how to reach an external data file. */
export interface Qcow2ImageOptions {
  /** Decompressors; defaults to the portable ones. */
  codecs?: CompressionCodecs;
  /** Upper bound of cached L2 tables, in bytes (default 32 MiB, like qemu's default maximum). */
  l2CacheBytes?: number;
  /** Open even with incompatible feature bits the engine does not know (never for untrusted images). */
  allowUnknownFeatures?: boolean;
  /**
   * Opens the external data file this image names (or the caller's override). Called only when the image has
   * one; the caller decides where the name resolves and whether that reference is allowed.
   */
  openDataFile?: (name: string | undefined) => Promise<Storage>;
  /**
   * Opened only to show metadata (qemu-img info; qemu's BDRV_O_NO_IO): the checks that matter only for reading
   * guest data are skipped, as qemu skips them.
   */
  metadataOnly?: boolean;
}

const DEFAULT_L2_CACHE_BYTES = 32 * 1024 * 1024;

/**
 * One qcow2 file's live state, read side: header, layout, active L1, snapshot table, and the mapping of guest
 * ranges to host ranges through a bounded L2 cache. It knows nothing of backing files: the device layer chains.
 */
export class Qcow2Image {
  readonly layout: ImageLayout;
  /** L2 tables by host offset; the writer marks the ones it changes dirty and writes them back. */
  readonly l2Cache: TableCache;
  /** The last decompressed cluster: sequential reads of a compressed cluster decompress it once. */
  private lastCompressed: { hostOffset: number; data: Uint8Array } | undefined;

  private constructor(
    readonly storage: Storage,
    readonly header: Qcow2Header,
    /** The file's size when opened; kept current through fileReaches and truncateFile by whatever writes. */
    public fileSize: number,
    private l1: L1Table,
    private snapshotTable: SnapshotEntry[],
    private snapshotTableSize: number,
    /** Where guest data lives: the image file, or its external data file. */
    readonly dataStorage: Storage,
    private readonly codecs: CompressionCodecs,
    l2CacheBytes: number,
  ) {
    this.layout = layoutOf(header);
    this.l2Cache = new TableCache(l2CacheBytes);
  }

  static async open(storage: Storage, options: Qcow2ImageOptions = {}): Promise<Qcow2Image> {
    try {
      return await Qcow2Image.openUnattributed(storage, options);
    } catch (error) {
      throw error instanceof Qcow2Error ? error.withFile(storage.name) : error;
    }
  }

  private static async openUnattributed(storage: Storage, options: Qcow2ImageOptions): Promise<Qcow2Image> {
    const fileSize = await storage.size();
    const probe = new Uint8Array(Math.min(fileSize, HEADER_PROBE_BYTES));
    await storage.read(probe, 0);
    const clusterBits = probeClusterBits(probe);
    const cluster0 = new Uint8Array(Math.min(fileSize, 2 ** clusterBits));
    await storage.read(cluster0, 0);
    const header = decodeHeader(cluster0);
    const layout = layoutOf(header);
    validateHeader(header, layout, fileSize, { allowUnknownFeatures: options.allowUnknownFeatures ?? false });

    const l1Bytes = new Uint8Array(header.l1Size * 8);
    if (l1Bytes.length > 0) await storage.read(l1Bytes, header.l1TableOffset);
    const { entries: snapshots, tableBytes } = await loadSnapshotTable(storage, header.snapshotsOffset, header.nbSnapshots, fileSize);
    for (const snapshot of snapshots) validateSnapshotL1(snapshot, layout, fileSize);

    let dataStorage = storage;
    if (!options.metadataOnly) validateForIo(header, layout);
    if (layout.externalDataFile) {
      if (options.openDataFile === undefined) {
        throw new Qcow2Error('DATA_FILE_NOT_FOUND', 'image has an external data file, but no way to open it was given');
      }
      dataStorage = await options.openDataFile(dataFileNameOf(header.extensions));
    }
    return new Qcow2Image(
      storage,
      header,
      fileSize,
      l1TableFrom(l1Bytes),
      snapshots,
      tableBytes,
      dataStorage,
      options.codecs ?? portableCodecs,
      options.l2CacheBytes ?? DEFAULT_L2_CACHE_BYTES,
    );
  }

  /** The file now reaches at least `end` bytes (something was written past its old end). */
  fileReaches(end: number): void {
    if (end > this.fileSize) this.fileSize = end;
  }

  /** Cuts the file at `end` bytes. */
  async truncateFile(end: number): Promise<void> {
    await this.storage.truncate(end);
    this.fileSize = end;
  }

  /** The internal snapshot table, in order. */
  get snapshots(): readonly SnapshotEntry[] {
    return this.snapshotTable;
  }

  /** Bytes the snapshot table occupies (its length is not stored in the header). */
  get snapshotTableBytes(): number {
    return this.snapshotTableSize;
  }

  /** Called by the writer after it wrote a new snapshot table and switched the header to it. */
  replaceSnapshots(entries: SnapshotEntry[], tableBytes: number): void {
    this.snapshotTable = entries;
    this.snapshotTableSize = tableBytes;
  }

  /** The active L1 table (replaced when a resize grows it). */
  get activeL1(): L1Table {
    return this.l1;
  }

  replaceActiveL1(bytes: Uint8Array): void {
    this.l1 = l1TableFrom(bytes);
  }

  get name(): string {
    return this.storage.name;
  }
  get virtualSize(): number {
    return this.header.size;
  }
  get clusterSize(): number {
    return this.layout.clusterSize;
  }
  get backingFile(): string | undefined {
    return this.header.backingFile;
  }
  get backingFormat(): string | undefined {
    return backingFormatOf(this.header.extensions);
  }
  get dataFileName(): string | undefined {
    return dataFileNameOf(this.header.extensions);
  }
  get featureNames(): FeatureName[] {
    return featureNamesOf(this.header.extensions);
  }
  get bitmapsExtension(): BitmapsExtension | undefined {
    return bitmapsExtensionOf(this.header.extensions);
  }
  get dirty(): boolean {
    return hasBit(this.header.incompatibleFeatures, IncompatibleFeature.Dirty);
  }
  get corrupt(): boolean {
    return hasBit(this.header.incompatibleFeatures, IncompatibleFeature.Corrupt);
  }
  get lazyRefcounts(): boolean {
    return hasBit(this.header.compatibleFeatures, CompatibleFeature.LazyRefcounts);
  }
  get dataFileRaw(): boolean {
    return this.layout.externalDataFile && hasBit(this.header.autoclearFeatures, AutoclearFeature.DataFileRaw);
  }
  get bitmapsConsistent(): boolean {
    return hasBit(this.header.autoclearFeatures, AutoclearFeature.Bitmaps);
  }

  findSnapshot(idOrName: string): SnapshotEntry | undefined {
    // qemu looks up by id first, then by name.
    return this.snapshots.find((s) => s.id === idOrName) ?? this.snapshots.find((s) => s.name === idOrName);
  }

  async snapshotL1(snapshot: SnapshotEntry): Promise<L1Table> {
    const bytes = new Uint8Array(snapshot.l1Size * 8);
    if (bytes.length > 0) await this.storage.read(bytes, snapshot.l1TableOffset);
    return l1TableFrom(bytes);
  }

  /** This layer's segments for a guest range, through `l1` (the active table unless a snapshot's is given). */
  async segments(offset: number, length: number, l1: L1Table = this.activeL1): Promise<Segment[]> {
    try {
      return await mapGuestRange(this.layout, l1, (l2Offset) => this.loadL2(l2Offset), offset, length);
    } catch (error) {
      throw error instanceof Qcow2Error ? error.withFile(this.name) : error;
    }
  }

  private async loadL2(l2Offset: number): Promise<DataView> {
    const table = await this.l2Table(l2Offset);
    return new DataView(table.buffer, table.byteOffset, table.byteLength);
  }

  /** The L2 table at `l2Offset`, from the cache or the file. */
  async l2Table(l2Offset: number): Promise<Uint8Array> {
    let table = this.l2Cache.get(l2Offset);
    if (table === undefined) {
      if (l2Offset + this.layout.clusterSize > this.fileSize) {
        throw new Qcow2Error('TRUNCATED', `L2 table at 0x${l2Offset.toString(16)} lies past the end of the file`, { file: this.name });
      }
      table = new Uint8Array(this.layout.clusterSize);
      await this.storage.read(table, l2Offset);
      this.l2Cache.set(l2Offset, table);
    }
    return table;
  }

  /** Forgets the last decompressed cluster (its host bytes may be reused after a write). */
  invalidateCompressedCache(): void {
    this.lastCompressed = undefined;
  }

  /**
   * Fills `dest` with the guest bytes of a Data, Zero or Compressed segment (dest.length = segment length).
   * Unallocated segments are the caller's: they read from the backing file.
   */
  async readSegment(seg: Segment, dest: Uint8Array): Promise<void> {
    switch (seg.kind) {
      case SegmentKind.Data:
        await readZeroPadded(this.dataStorage, dest, seg.hostOffset);
        return;
      case SegmentKind.Zero:
      case SegmentKind.Unallocated:
        dest.fill(0);
        return;
      case SegmentKind.Compressed: {
        const cluster = await this.compressedCluster(seg);
        const from = seg.guestOffset - seg.clusterGuestOffset;
        dest.set(cluster.subarray(from, from + seg.length));
        return;
      }
    }
  }

  /**
   * Reads many compressed segments at once: the streams of neighbouring clusters usually sit next to each other
   * in the file, so each group costs one read, and the clusters decompress concurrently (on Node, deflate runs
   * on the thread pool, so both cores work). `dests[i]` receives segment i.
   */
  async readCompressedSegments(segs: Segment[], dests: Uint8Array[]): Promise<void> {
    const MAX_GROUP = 8 * 1024 * 1024;
    let i = 0;
    while (i < segs.length) {
      // A group: consecutive streams whose spans overlap or touch, up to MAX_GROUP bytes of file.
      const start = segs[i]!.hostOffset;
      let end = start + segs[i]!.compressedSpan;
      let j = i + 1;
      while (j < segs.length) {
        const next = segs[j]!;
        if (next.hostOffset < start || next.hostOffset > end || next.hostOffset + next.compressedSpan - start > MAX_GROUP) break;
        end = Math.max(end, next.hostOffset + next.compressedSpan);
        j++;
      }
      const stored = new Uint8Array(Math.max(0, Math.min(end, this.fileSize) - start));
      await this.storage.read(stored, start);
      const clusters = new Map<number, Promise<Uint8Array>>();
      for (let k = i; k < j; k++) {
        const seg = segs[k]!;
        if (!clusters.has(seg.hostOffset)) {
          const from = seg.hostOffset - start;
          const bytes = stored.subarray(from, Math.min(stored.length, from + seg.compressedSpan));
          const cluster = decompressCluster(this.codecs, this.layout.compressionType, bytes, this.layout.clusterSize);
          // Awaited below in order; when an earlier one fails, the later ones must not become unhandled rejections.
          cluster.catch(() => {});
          clusters.set(seg.hostOffset, cluster);
        }
      }
      for (let k = i; k < j; k++) {
        const seg = segs[k]!;
        const cluster = await clusters.get(seg.hostOffset)!.catch((error: unknown) => {
          throw error instanceof Qcow2Error ? error.withFile(this.name) : error;
        });
        const from = seg.guestOffset - seg.clusterGuestOffset;
        dests[k]!.set(cluster.subarray(from, from + seg.length));
        this.lastCompressed = { hostOffset: seg.hostOffset, data: cluster };
      }
      i = j;
    }
  }

  private async compressedCluster(seg: Segment): Promise<Uint8Array> {
    if (this.lastCompressed?.hostOffset === seg.hostOffset) return this.lastCompressed.data;
    // The stream may cross cluster boundaries and end short of its last sector at the end of the file.
    const stored = new Uint8Array(Math.max(0, Math.min(seg.compressedSpan, this.fileSize - seg.hostOffset)));
    await this.storage.read(stored, seg.hostOffset);
    const data = await decompressCluster(this.codecs, this.layout.compressionType, stored, this.layout.clusterSize).catch((error: unknown) => {
      throw error instanceof Qcow2Error ? error.withFile(this.name) : error;
    });
    this.lastCompressed = { hostOffset: seg.hostOffset, data };
    return data;
  }

  async close(): Promise<void> {
    if (this.dataStorage !== this.storage) await this.dataStorage.close();
    await this.storage.close();
  }
}

function validateSnapshotL1(snapshot: SnapshotEntry, layout: ImageLayout, fileSize: number): void {
  const bytes = snapshot.l1Size * 8;
  const structure = 'snapshot-l1-table';
  if (bytes > 32 * 1024 * 1024) throw new Qcow2Error('L1_TOO_LARGE', `snapshot ${snapshot.id} L1 table too large (${snapshot.l1Size} entries)`, { structure });
  if (snapshot.l1TableOffset % layout.clusterSize !== 0) {
    throw new Qcow2Error('MISALIGNED_OFFSET', `snapshot ${snapshot.id} L1 table offset is not cluster aligned`, { structure });
  }
  if (snapshot.l1TableOffset + bytes > fileSize) throw new Qcow2Error('TRUNCATED', `snapshot ${snapshot.id} L1 table lies past the end of the file`, { structure });
}
