import type { ImageSink } from '../../device/image-sink.js';
import type { Storage } from '../../io/storage.js';
import { encodeVhdDynamicHeader, sectorBitmapSize, VHD_DEFAULT_BLOCK_SIZE, VHD_DYNAMIC_HEADER_SIZE, VHD_UNALLOCATED } from './dynamic-header.js';
import { encodeVhdFooter, VHD_EPOCH_SECONDS, VHD_FOOTER_SIZE, VhdDiskType } from './footer.js';
import { vhdSizeFor } from './geometry.js';

export interface VpcCreateOptions {
  /** Requested virtual size in bytes; the disk may come out larger (see vhdSizeFor). */
  size: number;
  /** qemu's subformat: 'dynamic' (default, sparse) or 'fixed' (raw data then the footer). */
  subformat?: 'dynamic' | 'fixed';
  /** Keep the requested size exactly (Azure's whole-MiB rule) instead of rounding it to a CHS geometry. */
  forceSize?: boolean;
  /** The footer's creation time (default: now). */
  date?: Date;
  /** The footer's unique id (default: random). */
  uniqueId?: Uint8Array;
}

const BAT_OFFSET = VHD_FOOTER_SIZE + VHD_DYNAMIC_HEADER_SIZE;

/** The virtual size a new VHD gets for `options` (qemu rounds up to the geometry unless force_size). */
export function vpcCreatedSize(options: Pick<VpcCreateOptions, 'size' | 'forceSize'>): number {
  return vhdSizeFor(options.size, options.forceSize ?? false).bytes;
}

function footerFor(options: VpcCreateOptions, dynamic: boolean): Uint8Array {
  const { geometry, bytes } = vhdSizeFor(options.size, options.forceSize ?? false);
  const uniqueId = options.uniqueId ?? globalThis.crypto.getRandomValues(new Uint8Array(16));
  return encodeVhdFooter({
    features: 2,
    formatVersion: 0x00010000,
    dataOffset: dynamic ? VHD_FOOTER_SIZE : undefined,
    timestamp: (Math.floor((options.date ?? new Date()).getTime() / 1000) - VHD_EPOCH_SECONDS) >>> 0,
    // qemu's marks: "qem2" tells readers to go by current_size, "qemu" by the geometry.
    creatorApp: options.forceSize ? 'qem2' : 'qemu',
    creatorMajor: 5,
    creatorMinor: 3,
    creatorOs: 'Wi2k',
    originalSize: bytes,
    currentSize: bytes,
    ...geometry,
    diskType: dynamic ? VhdDiskType.Dynamic : VhdDiskType.Fixed,
    uniqueId,
    savedState: 0,
  });
}

/**
 * Starts a new VHD in `storage` (emptied first) and returns the sink that fills it.
 *
 * Write order (crash safety): everything that makes the file a VHD comes last. Until finish(), offset 0 holds
 * zeros and the end of the file holds data, so a convert killed halfway leaves a file that qemu probes as raw
 * and refuses as vpc ("invalid VPC image"), never a VHD that looks whole but is not. finish() writes the BAT,
 * extends the file over the last block, then writes the footer copy at offset 0 (from then on the disk is
 * complete and readable) and the footer at the end. (crash-prefix.test.ts replays every prefix of the writes.)
 */
export async function createVpc(storage: Storage, options: VpcCreateOptions, filename = storage.name): Promise<ImageSink> {
  const dynamic = (options.subformat ?? 'dynamic') === 'dynamic';
  const footer = footerFor(options, dynamic);
  const size = vpcCreatedSize(options);
  if ((await storage.size()) > 0) await storage.truncate(0);
  if (dynamic) return new DynamicVpcSink(filename, storage, size, footer);
  // qemu's file driver writes zeros over a new file's first 4 KiB (so that later probes of the file's alignment
  // find an allocated block); do the same, so the file is laid out as qemu's.
  if (size > 0) await storage.write(new Uint8Array(Math.min(4096, size)), 0);
  return new FixedVpcSink(filename, storage, size, footer);
}

/** Fixed disk: the guest bytes at their own offsets, then the footer. */
class FixedVpcSink implements ImageSink {
  constructor(
    readonly filename: string,
    private readonly storage: Storage,
    readonly size: number,
    private readonly footer: Uint8Array,
  ) {}

  async write(data: Uint8Array, offset: number): Promise<void> {
    await this.storage.write(data.subarray(0, Math.max(0, Math.min(data.length, this.size - offset))), offset);
  }

  async finish(options: { flush?: boolean } = {}): Promise<void> {
    await this.storage.truncate(this.size);
    await this.storage.write(this.footer, this.size);
    if (options.flush ?? true) await this.storage.flush();
  }

  async close(): Promise<void> {
    await this.storage.close();
  }
}

/**
 * Dynamic disk, laid out as qemu lays it out: footer copy, dynamic header at 512, BAT at 1536, then 2 MiB blocks
 * (each a sector bitmap with every bit set, as qemu writes it, then the data) in the order the guest offsets
 * come, then the footer. Parts of a block never written stay holes in the file.
 */
class DynamicVpcSink implements ImageSink {
  private readonly blockSize = VHD_DEFAULT_BLOCK_SIZE;
  private readonly bitmapSize = sectorBitmapSize(VHD_DEFAULT_BLOCK_SIZE);
  private readonly bat: Uint32Array;
  /** Where the next block goes (and, at the end, the footer). */
  private next: number;
  private readonly bitmap: Uint8Array;

  constructor(
    readonly filename: string,
    private readonly storage: Storage,
    readonly size: number,
    private readonly footer: Uint8Array,
  ) {
    this.bat = new Uint32Array(Math.ceil(size / this.blockSize)).fill(VHD_UNALLOCATED);
    this.next = BAT_OFFSET + Math.ceil((this.bat.length * 4) / 512) * 512;
    this.bitmap = new Uint8Array(this.bitmapSize).fill(0xff);
  }

  async write(data: Uint8Array, offset: number): Promise<void> {
    const end = Math.min(offset + data.length, this.size);
    for (let at = offset; at < end; ) {
      const index = Math.floor(at / this.blockSize);
      const inBlock = at - index * this.blockSize;
      const n = Math.min(end - at, this.blockSize - inBlock);
      if (this.bat[index] === VHD_UNALLOCATED) await this.allocate(index);
      await this.storage.write(data.subarray(at - offset, at - offset + n), this.bat[index]! * 512 + this.bitmapSize + inBlock);
      at += n;
    }
  }

  private async allocate(index: number): Promise<void> {
    this.bat[index] = this.next / 512;
    await this.storage.write(this.bitmap, this.next);
    this.next += this.bitmapSize + this.blockSize;
  }

  async finish(options: { flush?: boolean } = {}): Promise<void> {
    const header = encodeVhdDynamicHeader({ tableOffset: BAT_OFFSET, headerVersion: 0x00010000, maxTableEntries: this.bat.length, blockSize: this.blockSize });
    const table = new Uint8Array(Math.ceil((this.bat.length * 4) / 512) * 512).fill(0xff);
    const view = new DataView(table.buffer);
    this.bat.forEach((entry, i) => view.setUint32(i * 4, entry));
    await this.storage.write(header, VHD_FOOTER_SIZE);
    await this.storage.write(table, BAT_OFFSET);
    // The last block's unwritten tail must exist (as a hole) before anything says the file is a VHD: qemu
    // refuses a dynamic disk whose blocks run past the end of the file as truncated.
    await this.storage.truncate(this.next);
    if (options.flush ?? true) await this.storage.flush();
    // From here on the file is a VHD: the copy at offset 0 first (qemu reads it), the footer at the end last.
    // (The other way round, a file ending in a footer but without the copy would read as a fixed disk.)
    await this.storage.write(this.footer, 0);
    await this.storage.write(this.footer, this.next);
    if (options.flush ?? true) await this.storage.flush();
  }

  async close(): Promise<void> {
    await this.storage.close();
  }
}
