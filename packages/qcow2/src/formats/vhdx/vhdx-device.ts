import { pushExtent, type BlockDevice, type Extent, type FormatCheckResult, type ImageDetails } from '../../device/block-device.js';
import { checkRange } from '../../device/range.js';
import { Qcow2Error } from '../../errors.js';
import { readZeroPadded, type Storage } from '../../io/storage.js';
import { batGeometry, batIndex, entryOffset, entryOffsetTooLarge, entryState, PayloadState, type BatGeometry } from './bat.js';
import { BAT_REGION, isZeroGuid, guidEquals, METADATA_REGION } from './guid.js';
import {
  currentHeader,
  decodeHeader,
  decodeRegionTable,
  hasVhdxSignature,
  HEADER_OFFSETS,
  HEADER_SIZE,
  MiB,
  REGION_TABLE_OFFSETS,
  REGION_TABLE_SIZE,
  type RegionEntry,
  type VhdxHeader,
} from './header-section.js';
import { findLogSequence } from './log.js';
import { decodeMetadata, type VhdxMetadata } from './metadata.js';

/** BAT entries loaded at most (128 MiB of table): 16 Mi blocks cover 16 TiB at the smallest block size. */
const MAX_BAT_ENTRIES = 16 * 1024 * 1024;
/** A metadata region is read up to this much (qemu writes 1 MiB). */
const MAX_METADATA_REGION = 16 * MiB;
/** A log is searched up to this size (qemu writes 1 MiB); a larger one with a log GUID set is refused. */
const MAX_LOG = 256 * MiB;

interface Region {
  start: number;
  end: number;
}

/**
 * A VHDX as a block device, read-only (VHDX Format Specification 1.0; qemu's block/vhdx.c). Opening checks what
 * qemu checks: the signature, a valid current header, a log with nothing to replay (qemu refuses to open an image
 * whose log needs replaying read-only, and so does this), the region table, the metadata, and that every present
 * payload block lies inside the file and outside the other regions. Blocks in the zero, not-present, undefined
 * or unmapped states read as zeros.
 */
export class VhdxDevice implements BlockDevice {
  readonly format = 'vhdx';
  readonly backing = undefined;

  private constructor(
    readonly filename: string,
    readonly storage: Storage,
    readonly header: VhdxHeader,
    readonly metadata: VhdxMetadata,
    private readonly geometry: BatGeometry,
    private readonly bat: Uint8Array,
    /** Problems with present blocks (past the end of the file, over other regions), for check. */
    private readonly batProblems: string[],
  ) {}

  /** The virtual size in whole logical sectors (qemu drops a partial last sector). */
  get size(): number {
    const sector = this.metadata.logicalSectorSize;
    return Math.floor(this.metadata.virtualDiskSize / sector) * sector;
  }

  /** Opens an image; with `forCheck`, problems with blocks are kept for check() instead of refusing the image (qemu's BDRV_O_CHECK). */
  static async open(storage: Storage, filename = storage.name, options: { forCheck?: boolean } = {}): Promise<VhdxDevice> {
    const fileSize = await storage.size();
    const read = async (offset: number, length: number): Promise<Uint8Array> => {
      const bytes = new Uint8Array(length);
      await readZeroPadded(storage, bytes, offset);
      return bytes;
    };
    if (!hasVhdxSignature(await read(0, 8))) throw new Qcow2Error('BAD_MAGIC', 'not a VHDX image (no "vhdxfile" signature)');
    const rawHeaders = await Promise.all(HEADER_OFFSETS.map((offset) => read(offset, HEADER_SIZE)));
    const header = currentHeader(decodeHeader(rawHeaders[0]!), decodeHeader(rawHeaders[1]!), rawHeaders[0]!, rawHeaders[1]!);
    const regions: Region[] = [];
    await checkLog(header, fileSize, read, filename);
    regions.push({ start: header.logOffset, end: header.logOffset + header.logLength });

    // qemu reads the first region table only.
    if (fileSize < REGION_TABLE_OFFSETS[0] + REGION_TABLE_SIZE) throw new Qcow2Error('TRUNCATED', 'VHDX region table lies past the end of the file');
    let bat: RegionEntry | undefined;
    let meta: RegionEntry | undefined;
    for (const entry of decodeRegionTable(await read(REGION_TABLE_OFFSETS[0], REGION_TABLE_SIZE))) {
      const overlap = regions.find((r) => entry.fileOffset < r.end && entry.fileOffset + entry.length > r.start);
      if (overlap !== undefined) throw new Qcow2Error('BAD_HEADER', `VHDX region ${entry.fileOffset}-${entry.fileOffset + entry.length} overlaps with region ${overlap.start}-${overlap.end}`);
      regions.push({ start: entry.fileOffset, end: entry.fileOffset + entry.length });
      if (guidEquals(entry.guid, BAT_REGION)) {
        if (bat !== undefined) throw new Qcow2Error('BAD_HEADER', 'VHDX region table names two BATs');
        bat = entry;
      } else if (guidEquals(entry.guid, METADATA_REGION)) {
        if (meta !== undefined) throw new Qcow2Error('BAD_HEADER', 'VHDX region table names two metadata regions');
        meta = entry;
      } else if (entry.required) {
        throw new Qcow2Error('UNSUPPORTED_FEATURE', 'VHDX region table has a required region this reader does not know');
      }
    }
    if (bat === undefined || meta === undefined) throw new Qcow2Error('BAD_HEADER', 'VHDX region table lacks the BAT or the metadata region');
    if (meta.fileOffset + Math.min(meta.length, 64 * 1024) > fileSize) throw new Qcow2Error('TRUNCATED', 'VHDX metadata region lies past the end of the file');
    const metadata = decodeMetadata(await read(meta.fileOffset, Math.min(meta.length, MAX_METADATA_REGION, fileSize - meta.fileOffset)));
    const geometry = batGeometry(metadata.virtualDiskSize, metadata.blockSize, metadata.logicalSectorSize);
    if (geometry.entries * 8 > bat.length) throw new Qcow2Error('BAD_ALLOCATION_TABLE', 'VHDX BAT region is too small for the disk');
    if (geometry.usedEntries > MAX_BAT_ENTRIES) throw new Qcow2Error('BAD_ALLOCATION_TABLE', `VHDX BAT of ${geometry.usedEntries} entries is larger than supported (${MAX_BAT_ENTRIES})`);
    if (bat.fileOffset + geometry.usedEntries * 8 > fileSize) throw new Qcow2Error('TRUNCATED', 'VHDX BAT lies past the end of the file');
    const table = await read(bat.fileOffset, geometry.usedEntries * 8);
    const problems = checkBlocks(table, geometry, metadata.virtualDiskSize, fileSize, regions);
    if (problems.length > 0 && !options.forCheck) throw new Qcow2Error('BAD_ALLOCATION_TABLE', problems[0]!);
    return new VhdxDevice(filename, storage, header, metadata, geometry, table, problems);
  }

  /** Calls `visit` for each block's part of [offset, offset+length): its BAT state and file offset. */
  private eachBlock(offset: number, length: number, visit: (state: number, fileOffset: number, at: number, inBlock: number, n: number) => void): void {
    const { blockSize } = this.geometry;
    const end = offset + length;
    for (let at = offset; at < end; ) {
      const block = Math.floor(at / blockSize);
      const inBlock = at - block * blockSize;
      const n = Math.min(end - at, blockSize - inBlock);
      const index = batIndex(this.geometry, block);
      visit(entryState(this.bat, index), entryOffset(this.bat, index), at, inBlock, n);
      at += n;
    }
  }

  async read(buffer: Uint8Array, offset: number): Promise<void> {
    checkRange(this, offset, buffer.length);
    const reads: Array<Promise<number>> = [];
    this.eachBlock(offset, buffer.length, (state, fileOffset, at, inBlock, n) => {
      const target = buffer.subarray(at - offset, at - offset + n);
      if (state === PayloadState.FullyPresent) reads.push(readZeroPadded(this.storage, target, fileOffset + inBlock));
      else if (state === PayloadState.PartiallyPresent || state === 4) {
        throw new Qcow2Error('UNSUPPORTED_FEATURE', `VHDX block at ${at} is in state ${state} (partially present), which only differencing images use`);
      } else target.fill(0);
    });
    await Promise.all(reads);
  }

  /**
   * Extents as the BAT says: present blocks are data, zero blocks known zeros, the rest unallocated. (qemu 7.2
   * has no block status for VHDX: its map calls the whole disk data, and its convert reads every byte.)
   */
  async extents(offset: number, length: number): Promise<Extent[]> {
    checkRange(this, offset, length);
    const out: Extent[] = [];
    this.eachBlock(offset, length, (state, fileOffset, at, inBlock, n) => {
      if (state === PayloadState.FullyPresent) pushExtent(out, { offset: at, length: n, kind: 'data', depth: 0, hostOffset: fileOffset + inBlock, hostFile: this.filename });
      // A state no reader can read (partially present: differencing only): data, so that reading it fails, as in qemu.
      else if (state === PayloadState.PartiallyPresent || state === 4) pushExtent(out, { offset: at, length: n, kind: 'data', depth: 0 });
      else if (state === PayloadState.Zero) pushExtent(out, { offset: at, length: n, kind: 'zero', depth: 0 });
      else pushExtent(out, { offset: at, length: n, kind: 'unallocated', depth: 0 });
    });
    return out;
  }

  details(): ImageDetails {
    return { clusterSize: this.metadata.blockSize };
  }

  /** qemu-img check for VHDX: every present block inside the file and outside the log, BAT and metadata. */
  async check(): Promise<FormatCheckResult> {
    return { corruptions: this.batProblems.length, messages: this.batProblems, reports: true };
  }

  async allocatedSize(): Promise<number | undefined> {
    return this.storage.allocatedSize?.();
  }

  async close(): Promise<void> {
    await this.storage.close();
  }
}

/**
 * Refuses an image whose log must be replayed, with qemu's words (qemu replays it when it may write, and refuses
 * a read-only open); a log GUID with no valid entry for it means nothing to replay.
 */
async function checkLog(header: VhdxHeader, fileSize: number, read: (offset: number, length: number) => Promise<Uint8Array>, filename: string): Promise<void> {
  if (header.logOffset < MiB || header.logOffset % MiB !== 0) throw new Qcow2Error('BAD_HEADER', `VHDX log offset ${header.logOffset} is invalid`);
  if (header.logVersion !== 0) throw new Qcow2Error('BAD_HEADER', `VHDX log version ${header.logVersion} is not supported`);
  if (isZeroGuid(header.logGuid) || header.logLength === 0) return;
  if (header.logLength % MiB !== 0) throw new Qcow2Error('BAD_HEADER', `VHDX log length ${header.logLength} is invalid`);
  if (header.logLength > MAX_LOG) throw new Qcow2Error('UNSUPPORTED_FEATURE', `VHDX log of ${header.logLength} bytes is larger than supported`);
  if (header.logOffset + header.logLength > fileSize) throw new Qcow2Error('TRUNCATED', 'VHDX log lies past the end of the file');
  if (findLogSequence(await read(header.logOffset, header.logLength), header.logGuid) !== undefined) {
    throw new Qcow2Error(
      'LOG_REPLAY_NEEDED',
      `VHDX image file '${filename}' opened read-only, but contains a log that needs to be replayed. To replay the log, run: qcowkit check -r all '${filename}' (or qemu-img check -r all)`,
    );
  }
}

/** qemu's vhdx_check_bat_entries: each present payload block must end inside the file and not overlap a region. */
function checkBlocks(table: Uint8Array, geometry: BatGeometry, virtualSize: number, fileSize: number, regions: Region[]): string[] {
  const problems: string[] = [];
  for (let block = 0; block < geometry.payloadBlocks; block++) {
    const index = batIndex(geometry, block);
    if (entryState(table, index) !== PayloadState.FullyPresent) continue;
    if (entryOffsetTooLarge(table, index)) {
      problems.push(`VHDX BAT entry ${index} offset overflow.`);
      continue;
    }
    const offset = entryOffset(table, index);
    // The last block may be only partly in the file (qemu wrote such images).
    const length = Math.min(geometry.blockSize, virtualSize - block * geometry.blockSize);
    if (offset >= fileSize) {
      problems.push(`VHDX BAT entry ${index} start offset ${offset} points after end of file (${fileSize}). Image has probably been truncated.`);
    } else if (offset + length > fileSize) {
      problems.push(`VHDX BAT entry ${index} end offset ${offset + length - 1} points after end of file (${fileSize}). Image has probably been truncated.`);
    }
    const overlap = regions.find((r) => offset < r.end && offset + geometry.blockSize > r.start);
    if (overlap !== undefined) problems.push(`VHDX region ${offset}-${offset + geometry.blockSize} overlaps with region ${overlap.start}-${overlap.end}`);
  }
  return problems;
}
