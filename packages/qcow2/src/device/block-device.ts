/**
 * BlockDevice: what every generic operation (map, compare, convert, commit…) talks to. Read, size, and the
 * extents question ("what is at this guest range?"), over raw files, qcow2 images and chains of them.
 */
export type ExtentKind = 'data' | 'zero' | 'unallocated';

/** One run of a guest range with the same answer to "what is here?" (block status). */
export interface Extent {
  offset: number;
  length: number;
  /**
   * data: guest data is stored here; zero: reads as zeros and is recorded as such; unallocated: nothing in any
   * layer (reads as zeros).
   */
  kind: ExtentKind;
  /** The chain layer that answered: 0 = this device, 1 = its backing file, … */
  depth: number;
  /** Host offset of the extent's first byte in the file that holds it, when known (not for compressed data). */
  hostOffset?: number;
  /** The file that holds the bytes at hostOffset (the image, its external data file, or a backing file). */
  hostFile?: string;
  /** Data stored in compressed clusters. */
  compressed?: boolean;
  /** Data that the host file is known to hold as a hole, so it also reads as zeros. */
  zeroData?: boolean;
}

/** The image formats the engine opens. */
export type ImageFormat = 'raw' | 'qcow2' | 'vpc' | 'vmdk' | 'vhdx';

/**
 * What `qemu-img info` shows of an image beyond its size, for devices that know it themselves (qcow2's comes
 * from its engine). Objects in `formatSpecific.data` list their keys in qemu's schema order; info reorders them
 * as qemu prints them.
 */
export interface ImageDetails {
  clusterSize?: number;
  formatSpecific?: { type: string; data: Record<string, unknown> };
}

/** A disk as every generic operation sees it: read, size, extents and the layer below; raw files, qcow2 images and chains of them. */
export interface BlockDevice {
  /** The file name as given by the user (or as stored in the overlay for backing files). */
  readonly filename: string;
  readonly format: ImageFormat;
  /** Virtual size in bytes. */
  readonly size: number;
  /** The next layer down, when this device has one. */
  readonly backing: BlockDevice | undefined;
  /** Fills `buffer` with the guest bytes at `offset`; the range must lie inside the device. */
  read(buffer: Uint8Array, offset: number): Promise<void>;
  /** The extents covering [offset, offset+length), in order, adjacent ones with equal properties merged. */
  extents(offset: number, length: number): Promise<Extent[]>;
  close(): Promise<void>;
  /** Format details for `info` (formats other than raw and qcow2). */
  details?(): ImageDetails;
  /** Bytes the image's files occupy on the host (st_blocks), for `info`'s disk size, when the host can tell. */
  allocatedSize?(): Promise<number | undefined>;
  /** qemu-img check for formats other than qcow2 that qemu can check (vmdk, vhdx); absent: no checks. */
  check?(): Promise<FormatCheckResult>;
}

/** What `qemu-img check` finds in a VMDK or VHDX: corruptions, qemu's error lines, and a failure that stops it. */
export interface FormatCheckResult {
  corruptions: number;
  /** qemu's stderr lines, in order. */
  messages: string[];
  /** The lines are error reports that qemu-img prefixes with its name (VHDX), not bare prints (VMDK). */
  reports?: boolean;
  /** Set when qemu-img would print "Check failed: <failure>" and exit 1 (VMDK stops at the first bad grain). */
  failure?: string;
}

/** Appends `extent`, merging it into the previous one when contiguous and alike (host ranges contiguous too). */
export function pushExtent(out: Extent[], extent: Extent): void {
  const last = out[out.length - 1];
  if (
    last !== undefined &&
    last.offset + last.length === extent.offset &&
    last.kind === extent.kind &&
    last.depth === extent.depth &&
    (last.compressed ?? false) === (extent.compressed ?? false) &&
    (last.zeroData ?? false) === (extent.zeroData ?? false) &&
    last.hostFile === extent.hostFile &&
    ((last.hostOffset === undefined && extent.hostOffset === undefined) ||
      (last.hostOffset !== undefined && extent.hostOffset !== undefined && last.hostOffset + last.length === extent.hostOffset))
  ) {
    last.length += extent.length;
    return;
  }
  out.push({ ...extent });
}

/** A device that can be written: the top image of a chain opened for writing. */
export interface WritableBlockDevice extends BlockDevice {
  write(buffer: Uint8Array, offset: number): Promise<void>;
  /** Make a range read as zeros; `unmap` allows deallocating it. */
  writeZeroes(offset: number, length: number, options?: { unmap?: boolean }): Promise<void>;
  /** Drop whole clusters of a range (contents become unspecified but stable, as qemu's discard). */
  discard(offset: number, length: number): Promise<void>;
  /** Metadata written back and data on stable storage. */
  flush(): Promise<void>;
}

/** Whether a device can be written (the top of a chain opened writable). */
export function isWritable(device: BlockDevice): device is WritableBlockDevice {
  return typeof (device as Partial<WritableBlockDevice>).write === 'function';
}
