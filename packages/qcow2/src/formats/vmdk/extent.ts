import type { Extent } from '../../device/block-device.js';
import type { Storage } from '../../io/storage.js';

/** One extent of a VMDK: a run of the guest disk stored in one file (flat, sparse, or stream-optimized). */
export interface VmdkExtent {
  /** Length in 512-byte sectors. */
  readonly sectors: number;
  /** The extent file's name (as qemu-img info reports it). */
  readonly fileName: string;
  /** The extent type named by the descriptor (FLAT, SPARSE, VMFS), or '' for a monolithic file. */
  readonly type: string;
  readonly flat: boolean;
  readonly compressed: boolean;
  /** Grain size in bytes (sparse extents). */
  readonly grainSize: number | undefined;
  readonly storage: Storage;
  /** Reads guest bytes at `offset` within the extent. */
  read(buffer: Uint8Array, offset: number): Promise<void>;
  /** Appends the extents of [offset, offset+length) within the extent, at guest offsets from `base`. */
  extents(out: Extent[], base: number, offset: number, length: number): Promise<void>;
  /** qemu-img check's test: the first allocated grain (as a sector within the extent) that lies past the end of the file. */
  firstGrainPastEnd(): Promise<number | undefined>;
}
