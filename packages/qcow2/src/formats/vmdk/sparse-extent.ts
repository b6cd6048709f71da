import { pushExtent, type Extent } from '../../device/block-device.js';
import type { CompressionCodecs } from '../../engine/compression.js';
import { Qcow2Error } from '../../errors.js';
import { viewOf } from '../../format/struct.js';
import { readZeroPadded, type Storage } from '../../io/storage.js';
import type { VmdkExtent } from './extent.js';
import { inflateGrain } from './grain-compression.js';
import { decodeSparseHeader, GD_AT_END_MARK, hasFlag, magicOf, VMDK_COMPRESSION_DEFLATE, VMDK_SECTOR, VMDK4_MAGIC, VmdkFlag, type VmdkSparseHeader } from './sparse-header.js';
import { grainDataLength, GRAIN_MARKER_SIZE, MarkerType } from './stream-markers.js';

/** qemu's limits (block/vmdk.c): 1 GiB grains, 512 entries per grain table, 32 Mi grain directory entries. */
const MAX_GRAIN_SECTORS = 0x200000;
const MAX_GTES_PER_GT = 512;
const MAX_GD_ENTRIES = 32 * 1024 * 1024;
/** Grain tables kept in memory (2 KiB each with 512 entries). */
const GT_CACHE_ENTRIES = 512;
/** Compressed grains near each other are read in one request of at most this many bytes. */
const MAX_COMPRESSED_SPAN = 8 * 1024 * 1024;
/** Grain table entry 1 means "reads as zeros" when the zeroed-grain flag is set. */
const ZEROED_GRAIN = 1;

/**
 * The header a sparse extent really uses: its own, or, when its grain directory is "at the end" (a
 * stream-optimized disk written front to back), the footer's copy near the end of the file, checked as qemu
 * checks it (footer marker, magic, end-of-stream marker).
 */
export async function effectiveHeader(storage: Storage, fileSize: number): Promise<VmdkSparseHeader> {
  const first = new Uint8Array(VMDK_SECTOR);
  await readZeroPadded(storage, first, 0);
  const header = decodeSparseHeader(first);
  if (header.gdOffset !== GD_AT_END_MARK) return header;
  const end = Math.ceil(fileSize / VMDK_SECTOR) * VMDK_SECTOR;
  if (end < 3 * VMDK_SECTOR) throw new Qcow2Error('TRUNCATED', 'Invalid footer (file too short for one)');
  const tail = new Uint8Array(3 * VMDK_SECTOR);
  await readZeroPadded(storage, tail, end - tail.length);
  const view = viewOf(tail);
  const footerMarkerOk = view.getUint32(8, true) === 0 && view.getUint32(12, true) === MarkerType.Footer;
  const eos = 2 * VMDK_SECTOR;
  const eosOk = view.getUint32(eos, true) === 0 && view.getUint32(eos + 4, true) === 0 && view.getUint32(eos + 8, true) === 0 && view.getUint32(eos + 12, true) === MarkerType.EndOfStream;
  if (!footerMarkerOk || magicOf(tail.subarray(VMDK_SECTOR)) !== VMDK4_MAGIC || !eosOk) throw new Qcow2Error('BAD_HEADER', 'Invalid footer');
  const footer = decodeSparseHeader(tail.subarray(VMDK_SECTOR, 2 * VMDK_SECTOR));
  if (footer.gdOffset === GD_AT_END_MARK) throw new Qcow2Error('BAD_HEADER', 'Invalid footer (its grain directory is "at the end" too)');
  return footer;
}

/**
 * A sparse extent (hosted sparse or stream-optimized): grains found through the grain directory and grain
 * tables, read as qemu reads them (block/vmdk.c): an unallocated grain reads as zeros (there is no backing
 * file), a compressed grain is one zlib stream behind a grain marker, allocated grains past the end of the file
 * read as zeros.
 */
export class SparseExtent implements VmdkExtent {
  readonly flat = false;
  readonly sectors: number;
  readonly grainSize: number;
  readonly compressed: boolean;
  private readonly markers: boolean;
  private readonly zeroedGrains: boolean;
  private readonly gtesPerGt: number;
  private readonly gtCache = new Map<number, Uint32Array>();

  private constructor(
    readonly storage: Storage,
    readonly fileName: string,
    readonly type: string,
    header: VmdkSparseHeader,
    private readonly directory: Uint32Array,
    private readonly fileSize: number,
    private readonly codecs: CompressionCodecs | undefined,
  ) {
    this.grainSize = header.grainSectors * VMDK_SECTOR;
    this.compressed = header.compressAlgorithm === VMDK_COMPRESSION_DEFLATE;
    this.markers = hasFlag(header.flags, VmdkFlag.Markers);
    this.zeroedGrains = hasFlag(header.flags, VmdkFlag.ZeroedGrain);
    this.gtesPerGt = header.gtesPerGt;
    this.sectors = header.capacity;
  }

  /** Opens a sparse extent whose header (see effectiveHeader) the caller read, with qemu's checks. */
  static async open(storage: Storage, fileName: string, type: string, header: VmdkSparseHeader, fileSize: number, codecs: CompressionCodecs | undefined): Promise<SparseExtent> {
    if (header.version > 3) throw new Qcow2Error('UNSUPPORTED_VERSION', `Unsupported VMDK version ${header.version}`);
    if (header.gtesPerGt > MAX_GTES_PER_GT) throw new Qcow2Error('BAD_HEADER', 'L2 table size too big');
    const l1EntrySectors = header.gtesPerGt * header.grainSectors;
    if (l1EntrySectors === 0) throw new Qcow2Error('BAD_HEADER', 'L1 entry size is invalid');
    if (header.grainSectors > MAX_GRAIN_SECTORS) throw new Qcow2Error('BAD_HEADER', 'Invalid granularity, image may be corrupt');
    if (!Number.isSafeInteger(header.capacity * VMDK_SECTOR)) throw new Qcow2Error('OFFSET_TOO_LARGE', 'VMDK capacity is out of range');
    if (Math.ceil(fileSize / VMDK_SECTOR) < header.overhead) {
      throw new Qcow2Error('TRUNCATED', `File truncated, expecting at least ${header.overhead * VMDK_SECTOR} bytes`);
    }
    const entries = Math.ceil(header.capacity / l1EntrySectors);
    if (entries > MAX_GD_ENTRIES) throw new Qcow2Error('BAD_ALLOCATION_TABLE', 'L1 size too big');
    const gdOffset = (header.gdOffset as number) * VMDK_SECTOR;
    // Past the end of the file the directory reads as zeros (unallocated), as in qemu; its size is capped above.
    const raw = new Uint8Array(entries * 4);
    if (gdOffset < fileSize) await readZeroPadded(storage, raw, gdOffset);
    const view = viewOf(raw);
    const directory = new Uint32Array(entries);
    for (let i = 0; i < entries; i++) directory[i] = view.getUint32(i * 4, true);
    return new SparseExtent(storage, fileName, type, header, directory, fileSize, codecs);
  }

  private get gtCoverage(): number {
    return this.gtesPerGt * this.grainSize;
  }

  /** The grain table `index` of the directory, or undefined when it is not allocated. */
  private async table(index: number): Promise<Uint32Array | undefined> {
    const sector = this.directory[index]!;
    if (sector === 0) return undefined;
    let table = this.gtCache.get(sector);
    if (table !== undefined) {
      // Most recently used last.
      this.gtCache.delete(sector);
      this.gtCache.set(sector, table);
      return table;
    }
    // A table past the end of the file reads as zeros (all grains unallocated), as in qemu.
    const raw = new Uint8Array(this.gtesPerGt * 4);
    await readZeroPadded(this.storage, raw, sector * VMDK_SECTOR);
    const view = viewOf(raw);
    table = new Uint32Array(this.gtesPerGt);
    for (let i = 0; i < table.length; i++) table[i] = view.getUint32(i * 4, true);
    if (this.gtCache.size >= GT_CACHE_ENTRIES) this.gtCache.delete(this.gtCache.keys().next().value!);
    this.gtCache.set(sector, table);
    return table;
  }

  /**
   * Calls `visit` for each grain piece of [offset, offset+length) with its grain table entry, a grain table at a
   * time; a range without a grain table comes as one piece with entry 0.
   */
  private async forEachGrain(offset: number, length: number, visit: (entry: number, at: number, inGrain: number, n: number) => void): Promise<void> {
    const end = offset + length;
    for (let at = offset; at < end; ) {
      const gtIndex = Math.floor(at / this.gtCoverage);
      if (this.directory[gtIndex] === 0) {
        // No grain table here nor in the next entries: all that range is unallocated, in one piece (a huge,
        // mostly empty disk is walked a run of directory entries at a time, not a grain at a time).
        let last = gtIndex;
        while (last + 1 < this.directory.length && this.directory[last + 1] === 0 && (last + 1) * this.gtCoverage < end) last++;
        const runEnd = Math.min(end, (last + 1) * this.gtCoverage);
        visit(0, at, at - Math.floor(at / this.grainSize) * this.grainSize, runEnd - at);
        at = runEnd;
        continue;
      }
      const gtEnd = Math.min(end, (gtIndex + 1) * this.gtCoverage);
      const table = (await this.table(gtIndex))!;
      while (at < gtEnd) {
        const grain = Math.floor(at / this.grainSize);
        const inGrain = at - grain * this.grainSize;
        const n = Math.min(gtEnd - at, this.grainSize - inGrain);
        visit(table[grain % this.gtesPerGt]!, at, inGrain, n);
        at += n;
      }
    }
  }

  private isZeroed(entry: number): boolean {
    return entry === 0 || (entry === ZEROED_GRAIN && this.zeroedGrains);
  }

  async read(buffer: Uint8Array, offset: number): Promise<void> {
    const compressed: Array<{ entry: number; inGrain: number; target: Uint8Array }> = [];
    // Uncompressed grains that follow each other in the file are read in one request.
    let run: { at: number; host: number; length: number } | undefined;
    const runs: Array<{ at: number; host: number; length: number }> = [];
    await this.forEachGrain(offset, buffer.length, (entry, at, inGrain, n) => {
      const target = buffer.subarray(at - offset, at - offset + n);
      if (this.isZeroed(entry)) {
        target.fill(0);
      } else if (this.compressed) {
        compressed.push({ entry, inGrain, target });
      } else {
        const host = entry * VMDK_SECTOR + inGrain;
        if (run !== undefined && run.host + run.length === host && run.at + run.length === at - offset) run.length += n;
        else runs.push((run = { at: at - offset, host, length: n }));
      }
    });
    await Promise.all(runs.map((r) => readZeroPadded(this.storage, buffer.subarray(r.at, r.at + r.length), r.host)));
    if (compressed.length > 0) await this.readCompressed(compressed);
  }

  /**
   * Reads and inflates compressed grains: grains close to each other in the file are fetched in one request
   * (a grain's stored length is only known from its marker), then inflated concurrently.
   */
  private async readCompressed(pieces: Array<{ entry: number; inGrain: number; target: Uint8Array }>): Promise<void> {
    const maxStored = 2 * this.grainSize; // qemu reads two grains' worth for one compressed grain
    const grains = [...new Set(pieces.map((p) => p.entry))].sort((a, b) => a - b);
    const stored = new Map<number, Uint8Array>();
    for (let i = 0; i < grains.length; ) {
      const start = grains[i]! * VMDK_SECTOR;
      let j = i + 1;
      while (j < grains.length && grains[j]! * VMDK_SECTOR + maxStored - start <= MAX_COMPRESSED_SPAN) j++;
      const span = new Uint8Array(grains[j - 1]! * VMDK_SECTOR + maxStored - start);
      await readZeroPadded(this.storage, span, start);
      for (let k = i; k < j; k++) {
        const at = grains[k]! * VMDK_SECTOR - start;
        if (!this.markers) {
          stored.set(grains[k]!, span.subarray(at, at + this.grainSize));
          continue;
        }
        const length = grainDataLength(span.subarray(at));
        if (length === 0 || length > maxStored) {
          throw new Qcow2Error('COMPRESSION_ERROR', `compressed grain at sector ${grains[k]} has an invalid length (${length})`);
        }
        stored.set(grains[k]!, span.subarray(at + GRAIN_MARKER_SIZE, at + GRAIN_MARKER_SIZE + length));
      }
      i = j;
    }
    const inflated = new Map<number, Uint8Array>();
    const codecs = this.codecs;
    if (codecs === undefined) throw new Qcow2Error('CODEC_UNAVAILABLE', 'reading a compressed VMDK needs a deflate codec');
    await Promise.all(grains.map(async (entry) => inflated.set(entry, await inflateGrain(codecs, stored.get(entry)!, this.grainSize))));
    for (const piece of pieces) {
      const grain = inflated.get(piece.entry)!;
      if (piece.inGrain + piece.target.length > grain.length) {
        throw new Qcow2Error('COMPRESSION_ERROR', `compressed grain at sector ${piece.entry} holds ${grain.length} bytes, fewer than read`);
      }
      piece.target.set(grain.subarray(piece.inGrain, piece.inGrain + piece.target.length));
    }
  }

  async extents(out: Extent[], base: number, offset: number, length: number): Promise<void> {
    await this.forEachGrain(offset, length, (entry, at, inGrain, n) => {
      const guest = base + at;
      if (entry === 0) pushExtent(out, { offset: guest, length: n, kind: 'unallocated', depth: 0 });
      else if (entry === ZEROED_GRAIN && this.zeroedGrains) pushExtent(out, { offset: guest, length: n, kind: 'zero', depth: 0 });
      else if (this.compressed) pushExtent(out, { offset: guest, length: n, kind: 'data', depth: 0, compressed: true, hostFile: this.fileName });
      else pushExtent(out, { offset: guest, length: n, kind: 'data', depth: 0, hostOffset: entry * VMDK_SECTOR + inGrain, hostFile: this.fileName });
    });
  }

  async firstGrainPastEnd(): Promise<number | undefined> {
    const grains = Math.ceil((this.sectors * VMDK_SECTOR) / this.grainSize);
    for (let gt = 0; gt < this.directory.length; gt++) {
      const table = await this.table(gt);
      if (table === undefined) continue;
      for (let i = 0; i < table.length && gt * this.gtesPerGt + i < grains; i++) {
        const entry = table[i]!;
        if (!this.isZeroed(entry) && entry * VMDK_SECTOR >= this.fileSize) return ((gt * this.gtesPerGt + i) * this.grainSize) / VMDK_SECTOR;
      }
    }
    return undefined;
  }
}
