import { pushExtent, type BlockDevice, type Extent, type ImageDetails } from '../../device/block-device.js';
import { checkRange } from '../../device/range.js';
import { rawFileExtents } from '../file-extents.js';
import { Qcow2Error } from '../../errors.js';
import { readZeroPadded, type Storage } from '../../io/storage.js';
import { decodeVhdDynamicHeader, sectorBitmapSize, VHD_DYNAMIC_HEADER_SIZE, VHD_UNALLOCATED } from './dynamic-header.js';
import { decodeVhdFooter, hasVhdCookie, VHD_FOOTER_SIZE, VhdDiskType, type VhdFooter } from './footer.js';
import { vhdVirtualSize } from './geometry.js';

/** BAT entries loaded at most (64 MiB of table): 16 Mi blocks of 2 MiB is 32 TiB, past the VHD maximum of 2 TiB. */
const MAX_BAT_ENTRIES = 16 * 1024 * 1024;

/** Where a dynamic disk's blocks are: the BAT and the per-block layout. */
interface BlockTable {
  blockSize: number;
  bitmapSize: number;
  /** Sector of each block's bitmap in the file, or VHD_UNALLOCATED. */
  entries: Uint32Array;
}

/**
 * A VHD (qemu's "vpc") as a block device, read-only. Fixed disks are the disk's bytes followed by the footer;
 * dynamic disks map 2 MiB (usually) blocks through the BAT, and unallocated blocks read as zeros. As in qemu,
 * where the footer is found decides the kind (offset 0: dynamic; only at the end: fixed), and the sector
 * bitmaps are not consulted: every sector of an allocated block is read from the file.
 */
export class VpcDevice implements BlockDevice {
  readonly format = 'vpc';
  readonly backing = undefined;

  private constructor(
    readonly filename: string,
    readonly storage: Storage,
    readonly footer: VhdFooter,
    readonly size: number,
    private readonly table: BlockTable | undefined,
    private readonly fileSize: number,
  ) {}

  /** True for a fixed disk (data at the start of the file, the footer after it). */
  get fixed(): boolean {
    return this.table === undefined;
  }

  static async open(storage: Storage, filename = storage.name): Promise<VpcDevice> {
    const fileSize = await storage.size();
    const first = new Uint8Array(VHD_FOOTER_SIZE);
    await readZeroPadded(storage, first, 0);
    let footerBytes = first;
    const dynamic = hasVhdCookie(first);
    if (!dynamic) {
      // A fixed disk has its footer only at the end of the file.
      if (fileSize < VHD_FOOTER_SIZE) throw new Qcow2Error('TRUNCATED', 'File too small for a VHD header');
      footerBytes = new Uint8Array(VHD_FOOTER_SIZE);
      await readZeroPadded(storage, footerBytes, fileSize - VHD_FOOTER_SIZE);
      if (!hasVhdCookie(footerBytes)) throw new Qcow2Error('BAD_MAGIC', 'invalid VPC image');
    }
    const footer = decodeVhdFooter(footerBytes);
    // A footer found only at the end must be a fixed disk's (qemu refuses anything else there).
    if (!dynamic && footer.diskType !== VhdDiskType.Fixed) throw new Qcow2Error('BAD_MAGIC', 'invalid VPC image');
    if (footer.diskType === VhdDiskType.Differencing) {
      // qemu reads a differencing disk as if it had no parent, which gives wrong data; refuse instead.
      throw new Qcow2Error('UNSUPPORTED_FEATURE', 'differencing VHD images (with a parent disk) are not supported');
    }
    const size = vhdVirtualSize(footer);
    const table = dynamic ? await loadBlockTable(storage, footer, size, fileSize) : undefined;
    // qemu opens by where the footer is but reads by its type: a footer at offset 0 that says "fixed" (with a
    // valid dynamic header behind it) reads the file as it is.
    return new VpcDevice(filename, storage, footer, size, footer.diskType === VhdDiskType.Fixed ? undefined : table, fileSize);
  }

  async read(buffer: Uint8Array, offset: number): Promise<void> {
    checkRange(this, offset, buffer.length);
    const table = this.table;
    if (table === undefined) {
      await readZeroPadded(this.storage, buffer, offset);
      return;
    }
    let done = 0;
    while (done < buffer.length) {
      const at = offset + done;
      const index = Math.floor(at / table.blockSize);
      const inBlock = at - index * table.blockSize;
      const n = Math.min(buffer.length - done, table.blockSize - inBlock);
      const piece = buffer.subarray(done, done + n);
      const entry = table.entries[index]!;
      if (entry === VHD_UNALLOCATED) piece.fill(0);
      else await readZeroPadded(this.storage, piece, entry * 512 + table.bitmapSize + inBlock);
      done += n;
    }
  }

  async extents(offset: number, length: number): Promise<Extent[]> {
    checkRange(this, offset, length);
    const out: Extent[] = [];
    if (length === 0) return out;
    const table = this.table;
    if (table === undefined) return this.fixedExtents(offset, length);
    const end = offset + length;
    for (let at = offset; at < end; ) {
      const index = Math.floor(at / table.blockSize);
      const inBlock = at - index * table.blockSize;
      const n = Math.min(end - at, table.blockSize - inBlock);
      const entry = table.entries[index]!;
      // qemu reports an unallocated block as known zeros ("present", not "data").
      if (entry === VHD_UNALLOCATED) pushExtent(out, { offset: at, length: n, kind: 'zero', depth: 0 });
      else pushExtent(out, { offset: at, length: n, kind: 'data', depth: 0, hostOffset: entry * 512 + table.bitmapSize + inBlock, hostFile: this.filename });
      at += n;
    }
    return out;
  }

  /** A fixed disk is raw data in the file: data where the file holds data, known zeros over its holes. */
  private async fixedExtents(offset: number, length: number): Promise<Extent[]> {
    const out: Extent[] = [];
    await rawFileExtents(out, { storage: this.storage, size: this.fileSize, name: this.filename }, offset, offset, length);
    return out;
  }

  details(): ImageDetails {
    return this.table === undefined ? {} : { clusterSize: this.table.blockSize };
  }

  async allocatedSize(): Promise<number | undefined> {
    return this.storage.allocatedSize?.();
  }

  async close(): Promise<void> {
    await this.storage.close();
  }
}

/** Reads and checks the dynamic header and the BAT entries the disk's size needs, as qemu's vpc_open does. */
async function loadBlockTable(storage: Storage, footer: VhdFooter, size: number, fileSize: number): Promise<BlockTable> {
  const headerOffset = footer.dataOffset;
  if (headerOffset === undefined || headerOffset + VHD_DYNAMIC_HEADER_SIZE > fileSize) {
    throw new Qcow2Error('TRUNCATED', 'Error reading dynamic VHD header (it lies past the end of the file)');
  }
  const headerBytes = new Uint8Array(VHD_DYNAMIC_HEADER_SIZE);
  await readZeroPadded(storage, headerBytes, headerOffset);
  const header = decodeVhdDynamicHeader(headerBytes);
  const { blockSize, maxTableEntries, tableOffset } = header;
  const needed = Math.ceil(size / blockSize);
  if (size / blockSize > 0xffffffff) throw new Qcow2Error('BAD_HEADER', 'Too many blocks');
  if (maxTableEntries * blockSize < size) throw new Qcow2Error('BAD_ALLOCATION_TABLE', 'Page table too small');
  if (maxTableEntries > 0x1fffffff) throw new Qcow2Error('BAD_ALLOCATION_TABLE', `Max Table Entries too large (${maxTableEntries})`);
  if (needed > MAX_BAT_ENTRIES) throw new Qcow2Error('BAD_ALLOCATION_TABLE', `block allocation table of ${needed} entries is larger than supported (${MAX_BAT_ENTRIES})`);
  // qemu's test of the whole table (all max_table_entries of it): no block, nor the table itself, may end past
  // the end of the file (which qemu counts in whole sectors). The table is scanned in pieces; the entries the
  // disk's size needs are kept.
  const fileEnd = Math.ceil(fileSize / 512) * 512;
  const truncated = (what: string): Qcow2Error =>
    new Qcow2Error('BAD_ALLOCATION_TABLE', `block-vpc: free_data_block_offset points after the end of file. The image has been truncated. (${what})`);
  if (Math.ceil((tableOffset + maxTableEntries * 4) / 512) * 512 > fileEnd) throw truncated('the block allocation table');
  const entries = new Uint32Array(needed);
  const bitmapSize = sectorBitmapSize(blockSize);
  const piece = new Uint8Array(Math.min(maxTableEntries * 4, 4 * 1024 * 1024));
  const view = new DataView(piece.buffer);
  for (let first = 0; first < maxTableEntries; first += piece.length / 4) {
    const count = Math.min(piece.length / 4, maxTableEntries - first);
    await readZeroPadded(storage, piece.subarray(0, count * 4), tableOffset + first * 4);
    for (let i = 0; i < count; i++) {
      const entry = view.getUint32(i * 4);
      if (first + i < needed) entries[first + i] = entry;
      if (entry !== VHD_UNALLOCATED && entry * 512 + bitmapSize + blockSize > fileEnd) throw truncated(`block ${first + i} at sector ${entry}`);
    }
  }
  return { blockSize, bitmapSize, entries };
}
