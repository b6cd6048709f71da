import type { ImageSink } from '../../device/image-sink.js';
import { Qcow2Error } from '../../errors.js';
import type { Storage } from '../../io/storage.js';
import { batGeometry, batIndex, PayloadState, setEntry, type BatGeometry } from './bat.js';
import { BAT_REGION, METADATA_REGION, randomGuid } from './guid.js';
import { encodeFileIdentifier, encodeHeader, encodeRegionTable, HEADER_OFFSETS, MiB, REGION_TABLE_OFFSETS, VHDX_SIGNATURE } from './header-section.js';
import { encodeMetadata, FileParameterFlag, MAX_BLOCK_SIZE } from './metadata.js';

export interface VhdxCreateOptions {
  /** Virtual size in bytes (rounded up to whole sectors, as qemu does). */
  size: number;
  /** 'dynamic' (default): blocks allocated as data comes; 'fixed': every block present, in place. */
  subformat?: 'dynamic' | 'fixed';
  /** Block size in bytes: 0 or absent picks qemu's (8 MiB up to 1 GiB, 16 MiB up to 100 GiB, 32 MiB, 64 MiB past 32 TiB). */
  blockSize?: number;
  /** Log size in bytes (default 1 MiB); the log is written empty. */
  logSize?: number;
  /** Blocks never written are in the ZERO state (qemu's default, on), else NOT_PRESENT. */
  blockStateZero?: boolean;
}

const GiB = 1024 * MiB;
const TiB = 1024 * GiB;
const MAX_SIZE = 64 * TiB;
/** BAT entries held at most (128 MiB): larger tables want larger blocks. */
const MAX_BAT_ENTRIES = 16 * 1024 * 1024;
const SECTOR = 512;
const CREATOR = 'qcowkit';

const roundUp = (n: number, to: number): number => Math.ceil(n / to) * to;

/** Sizes as qemu's vhdx_co_create_opts settles them (rounded up; block size capped), checked as qemu checks them. */
export function vhdxCreateSizes(options: VhdxCreateOptions): { size: number; blockSize: number; logSize: number } {
  const size = roundUp(options.size, SECTOR);
  if (size > MAX_SIZE) throw new Qcow2Error('BAD_ARGUMENT', 'Image size too large; max of 64TB');
  const logSize = options.logSize === undefined ? MiB : roundUp(options.logSize, MiB);
  if (logSize > 0xffffffff) throw new Qcow2Error('BAD_ARGUMENT', 'Log size must be smaller than 4 GB');
  if (logSize < MiB) throw new Qcow2Error('BAD_ARGUMENT', 'Log size must be a multiple of 1 MB');
  let blockSize = Math.min(roundUp(options.blockSize ?? 0, MiB), MAX_BLOCK_SIZE);
  if (blockSize === 0) blockSize = size > 32 * TiB ? 64 * MiB : size > 100 * GiB ? 32 * MiB : size > GiB ? 16 * MiB : 8 * MiB;
  if ((blockSize & (blockSize - 1)) !== 0) throw new Qcow2Error('BAD_ARGUMENT', 'Block size must be a power of two');
  return { size, blockSize, logSize };
}

/**
 * Starts a new VHDX in `storage` (emptied first), laid out as qemu lays one out: header section (1 MiB), an empty
 * log, the BAT, the metadata region, and the payload blocks from 5 MiB after the BAT. No log is ever used: the
 * file is written once, front to back, so the headers say "no log" (log GUID zero) from the start.
 *
 * Write order (crash safety): the "vhdxfile" signature, without which nothing reads the file as a VHDX, is
 * written last, after the BAT. A convert killed before that leaves a file that qemu refuses as vhdx and probes as
 * raw; after it, the image is complete.
 */
export async function createVhdx(storage: Storage, options: VhdxCreateOptions, filename = storage.name): Promise<ImageSink> {
  const { size, blockSize, logSize } = vhdxCreateSizes(options);
  const fixed = options.subformat === 'fixed';
  const geometry = batGeometry(size, blockSize, SECTOR);
  if (geometry.usedEntries > MAX_BAT_ENTRIES) throw new Qcow2Error('BAD_ARGUMENT', `a ${size}-byte VHDX with ${blockSize}-byte blocks needs ${geometry.usedEntries} BAT entries; use a larger block_size`);
  const batOffset = roundUp(MiB + logSize, MiB);
  const batLength = roundUp(geometry.entries * 8, MiB);
  const metadataOffset = roundUp(batOffset + batLength, MiB);
  const dataOffset = batOffset + batLength + 5 * MiB;

  if ((await storage.size()) > 0) await storage.truncate(0);
  await storage.write(encodeFileIdentifier(CREATOR, false), 0);
  const guid = { fileWriteGuid: randomGuid(), dataWriteGuid: randomGuid(), logGuid: new Uint8Array(16) };
  const sequence = globalThis.crypto.getRandomValues(new Uint32Array(1))[0]!;
  for (const [i, offset] of HEADER_OFFSETS.entries()) {
    await storage.write(encodeHeader({ ...guid, sequenceNumber: sequence + i, logVersion: 0, version: 1, logLength: logSize, logOffset: MiB }), offset);
  }
  const regions = encodeRegionTable([
    { guid: BAT_REGION, fileOffset: batOffset, length: batLength, required: true },
    { guid: METADATA_REGION, fileOffset: metadataOffset, length: MiB, required: true },
  ]);
  for (const offset of REGION_TABLE_OFFSETS) await storage.write(regions, offset);
  const metadata = { blockSize, fileParameterBits: fixed ? FileParameterFlag.LeaveBlocksAllocated : 0, virtualDiskSize: size, logicalSectorSize: SECTOR, physicalSectorSize: SECTOR };
  await storage.write(encodeMetadata(metadata, randomGuid()), metadataOffset);

  const bat = new Uint8Array(geometry.usedEntries * 8);
  const emptyState = fixed ? PayloadState.FullyPresent : (options.blockStateZero ?? true) ? PayloadState.Zero : PayloadState.NotPresent;
  for (let block = 0; block < geometry.payloadBlocks; block++) {
    setEntry(bat, batIndex(geometry, block), emptyState, fixed ? dataOffset + block * blockSize : 0);
  }
  const end = fixed ? dataOffset + geometry.payloadBlocks * blockSize : dataOffset;
  await storage.truncate(end);
  return new VhdxSink(filename, storage, size, geometry, bat, batOffset, end, fixed);
}

/**
 * Fills a new VHDX: a dynamic one allocates each block at the end of the file (MiB-aligned, as the
 * specification wants and qemu does) the first time data comes for it; a fixed one writes in place.
 */
class VhdxSink implements ImageSink {
  constructor(
    readonly filename: string,
    private readonly storage: Storage,
    readonly size: number,
    private readonly geometry: BatGeometry,
    private readonly bat: Uint8Array,
    private readonly batOffset: number,
    /** The end of the file: where the next block goes. */
    private end: number,
    private readonly fixed: boolean,
  ) {}

  /** File offset of each payload block once allocated (fixed: all of them, from the start). */
  private readonly placed = new Map<number, number>();

  private blockOffset(block: number): number {
    if (this.fixed) return this.end - (this.geometry.payloadBlocks - block) * this.geometry.blockSize;
    let offset = this.placed.get(block);
    if (offset === undefined) {
      offset = roundUp(this.end, MiB);
      this.end = offset + this.geometry.blockSize;
      this.placed.set(block, offset);
      setEntry(this.bat, batIndex(this.geometry, block), PayloadState.FullyPresent, offset);
    }
    return offset;
  }

  async write(data: Uint8Array, offset: number): Promise<void> {
    const { blockSize } = this.geometry;
    const end = Math.min(offset + data.length, this.size);
    for (let at = offset; at < end; ) {
      const block = Math.floor(at / blockSize);
      const inBlock = at - block * blockSize;
      const n = Math.min(end - at, blockSize - inBlock);
      await this.storage.write(data.subarray(at - offset, at - offset + n), this.blockOffset(block) + inBlock);
      at += n;
    }
  }

  async finish(options: { flush?: boolean } = {}): Promise<void> {
    const flush = options.flush ?? true;
    // Every allocated block lies wholly inside the file (qemu grows the file a whole block at a time).
    await this.storage.truncate(this.end);
    await this.storage.write(this.bat, this.batOffset);
    if (flush) await this.storage.flush();
    await this.storage.write(new TextEncoder().encode(VHDX_SIGNATURE), 0);
    if (flush) await this.storage.flush();
  }

  async close(): Promise<void> {
    await this.storage.close();
  }
}
