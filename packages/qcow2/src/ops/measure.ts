import type { BlockDevice, Extent } from '../device/block-device.js';
import { Qcow2Device } from '../device/qcow2-device.js';
import { Qcow2Error } from '../errors.js';
import { AutoclearFeature, HeaderExtensionType, MAX_CLUSTER_BITS, MAX_L1_BYTES, MIN_CLUSTER_BITS, SUBCLUSTERS_PER_CLUSTER } from '../format/constants.js';
import {
  bitmapDirectoryEntrySize,
  checkBitmapEntryConstraints,
  checkBitmapsExtension,
  decodeBitmapDirectory,
  decodeBitmapsExtension,
} from '../format/bitmap-directory.js';
import { findExtension } from '../format/header-extensions.js';
import { hasBit } from '../format/header.js';
import { viewOf } from '../format/struct.js';
import type { Preallocation } from '../engine/create-image.js';
import { walkExtents } from './extent-walk.js';

/**
 * qemu-img measure: how large a new image would be, for a disk of a given size or for the contents of an
 * existing one. Sizes are bigints: qemu measures disks up to 2^63 - 1 bytes, far past Number's exact range.
 */

/** The creation options measure looks at (qemu-img measure -O FMT -o …); the others do not change sizes. */
export interface MeasureOptions {
  /** Format of the image to be made: qemu-img measure's -O (qemu's default is raw). */
  format: 'qcow2' | 'raw';
  /** Bytes; qcow2 only. Default 65536. */
  clusterSize?: number;
  /** qcow2 only. Default 16. */
  refcountBits?: number;
  /** '0.10' = version 2, '1.1' = version 3 (default). Version 2 images carry no bitmaps. */
  compat?: '0.10' | '1.1';
  extendedL2?: boolean;
  /** full and falloc allocate every data cluster up front, so they are required too. */
  preallocation?: Preallocation;
  /**
   * The new image would sit on a backing file: nothing says how much of the source that file already holds, so
   * every data cluster counts as required.
   */
  hasBackingFile?: boolean;
  /**
   * The "size" creation option (bytes). With a source image the source decides the size, and qemu uses this one
   * only for its "image size is too large" check.
   */
  size?: bigint | number;
}

/** qemu's BlockMeasureInfo. */
export interface MeasureResult {
  /** Bytes the new image needs with the data it will hold (metadata of a fully allocated image included). */
  required: bigint;
  /** Bytes the image takes once every cluster of the disk is allocated. */
  fullyAllocated: bigint;
  /**
   * Bytes the persistent dirty bitmaps of the source would add when copied (qemu-img convert --bitmaps). Present
   * only when both sides support persistent bitmaps: a qcow2 v3 source and a qcow2 v3 target.
   */
  bitmaps?: bigint;
}

/** The qcow2 options measure checks, as numbers. */
interface Qcow2Geometry {
  clusterSize: bigint;
  refcountOrder: number;
  extendedL2: boolean;
  version: 2 | 3;
}

const L1_ENTRY_BYTES = 8n;
const REFCOUNT_TABLE_ENTRY_BYTES = 8n;
const BITMAP_TABLE_ENTRY_BYTES = 8n;
const SECTOR = 512n;
const PREALLOCATION_MODES: string[] = ['off', 'metadata', 'falloc', 'full'];

function fail(message: string): never {
  throw new Qcow2Error('BAD_ARGUMENT', message);
}

function roundUp(value: bigint, alignment: bigint): bigint {
  return ((value + alignment - 1n) / alignment) * alignment;
}

function divRoundUp(value: bigint, divisor: bigint): bigint {
  return (value + divisor - 1n) / divisor;
}

function toBigInt(value: bigint | number, what: string): bigint {
  if (typeof value === 'bigint') return value;
  if (!Number.isSafeInteger(value)) fail(`Invalid ${what} ${value}`);
  return BigInt(value);
}

/**
 * Checks the qcow2 options in qemu's order (cluster_size with extended_l2, compat, refcount_bits, preallocation),
 * with its messages. compat and preallocation are checked at run time too: they arrive as strings from a CLI.
 */
function qcow2Geometry(options: MeasureOptions): Qcow2Geometry {
  const extendedL2 = options.extendedL2 ?? false;
  const clusterSize = options.clusterSize ?? 65536;
  const clusterBits = Math.log2(clusterSize);
  if (!Number.isInteger(clusterBits) || clusterBits < MIN_CLUSTER_BITS || clusterBits > MAX_CLUSTER_BITS) {
    fail(`Cluster size must be a power of two between ${2 ** MIN_CLUSTER_BITS} and ${2 ** (MAX_CLUSTER_BITS - 10)}k`);
  }
  const minExtendedL2ClusterSize = 2 ** MIN_CLUSTER_BITS * SUBCLUSTERS_PER_CLUSTER;
  if (extendedL2 && clusterSize < minExtendedL2ClusterSize) {
    fail(`Extended L2 entries are only supported with cluster sizes of at least ${minExtendedL2ClusterSize} bytes`);
  }
  const compat: string = options.compat ?? '1.1';
  if (compat !== '0.10' && compat !== '1.1') fail(`Invalid compatibility level: '${compat}'`);
  const version = compat === '0.10' ? 2 : 3;
  const refcountBits = options.refcountBits ?? 16;
  const refcountOrder = Math.log2(refcountBits);
  if (!Number.isInteger(refcountOrder) || refcountOrder < 0 || refcountOrder > 6) {
    fail('Refcount width must be a power of two and may not exceed 64 bits');
  }
  if (version < 3 && refcountBits !== 16) {
    fail('Different refcount widths than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)');
  }
  const preallocation: string = options.preallocation ?? 'off';
  if (!PREALLOCATION_MODES.includes(preallocation)) fail(`invalid parameter value: ${preallocation}`);
  // Like qemu's measure (unlike its create), extended_l2 with compat=0.10 is measured, not refused.
  return { clusterSize: BigInt(clusterSize), refcountOrder, extendedL2, version };
}

/**
 * Clusters of refcount table and refcount blocks needed to count `clusters` clusters plus themselves, in bytes:
 * the fixed point where the blocks count every cluster, their own and the table's included.
 */
export function refcountMetadataSize(clusters: bigint, clusterSize: bigint, refcountOrder: number): bigint {
  const blocksPerTableCluster = clusterSize / REFCOUNT_TABLE_ENTRY_BYTES;
  const refcountsPerBlock = (clusterSize * 8n) >> BigInt(refcountOrder);
  let table = 0n;
  let blocks = 0n;
  let total = 0n;
  let last: bigint;
  do {
    last = total;
    blocks = divRoundUp(clusters + table + blocks, refcountsPerBlock);
    table = divRoundUp(blocks, blocksPerTableCluster);
    total = clusters + blocks + table;
  } while (total !== last);
  return (blocks + table) * clusterSize;
}

/**
 * Size of a qcow2 image of `virtualSize` bytes with every cluster allocated: one header cluster, every L2 table,
 * the L1 table (a whole number of clusters), the refcount structures for all of them, and the data.
 */
export function qcow2FullyAllocatedSize(virtualSize: bigint, clusterSize: bigint, refcountOrder: number, extendedL2: boolean): bigint {
  const l2EntryBytes = extendedL2 ? 16n : 8n;
  const alignedSize = roundUp(virtualSize, clusterSize);
  let metadata = clusterSize; // header
  const l2Entries = roundUp(alignedSize / clusterSize, clusterSize / l2EntryBytes);
  metadata += l2Entries * l2EntryBytes;
  const l1Entries = roundUp((l2Entries * l2EntryBytes) / clusterSize, clusterSize / L1_ENTRY_BYTES);
  metadata += l1Entries * L1_ENTRY_BYTES;
  metadata += refcountMetadataSize((metadata + alignedSize) / clusterSize, clusterSize, refcountOrder);
  return metadata + alignedSize;
}

/**
 * qemu refuses to measure a disk whose L1 table would exceed its 32 MiB limit (checked on the size option only,
 * not on a source image's size).
 */
function checkL1Limit(size: bigint, geometry: Qcow2Geometry): void {
  const l2EntryBytes = geometry.extendedL2 ? 16n : 8n;
  const clusters = roundUp(size, geometry.clusterSize) / geometry.clusterSize;
  const l2Tables = divRoundUp(clusters, geometry.clusterSize / l2EntryBytes);
  if (l2Tables * L1_ENTRY_BYTES > BigInt(MAX_L1_BYTES)) fail('The image size is too large (try using a larger cluster size)');
}

/** The disk length qemu works with: raw files round up to whole sectors, qcow2 headers round down. */
function sectorLength(device: BlockDevice): bigint {
  const size = BigInt(device.size);
  return device.format === 'raw' ? roundUp(size, SECTOR) : (size / SECTOR) * SECTOR;
}

/**
 * Bytes of the target's clusters that hold source data: every target cluster containing any byte the source's
 * block status calls data (in any layer of its chain). Zero and unallocated ranges do not count, nor data whose
 * host bytes are a known hole. A cluster counts once however many data extents touch it.
 */
export async function dataClusterBytes(source: BlockDevice, clusterSize: number, length: number = source.size): Promise<bigint> {
  const size = BigInt(clusterSize);
  let clusters = 0n;
  let countedUpTo = 0n; // clusters below this index have been counted
  for await (const extent of walkExtents(source, 0, Math.min(length, source.size))) {
    if (extent.kind !== 'data' || extent.zeroData === true) continue;
    const first = BigInt(extent.offset) / size;
    const end = divRoundUp(BigInt(extent.offset + extent.length), size);
    const from = first > countedUpTo ? first : countedUpTo;
    if (end > from) {
      clusters += end - from;
      countedUpTo = end;
    }
  }
  return clusters * size;
}

/**
 * Bytes the source's persistent dirty bitmaps would take in a target with `clusterSize` clusters: for each
 * bitmap, its bits (one per granularity-sized chunk of the disk) in whole clusters, plus its bitmap table (8
 * bytes per bitmap cluster) in whole clusters; plus the bitmap directory in whole clusters. Every bitmap qemu
 * loads counts, in-use ones too; with the autoclear "bitmaps" bit clear, qemu ignores them all (0).
 */
export async function persistentBitmapsSize(source: Qcow2Device, clusterSize: number): Promise<bigint> {
  const image = source.image;
  const extension = findExtension(image.header.extensions, HeaderExtensionType.Bitmaps);
  if (extension === undefined || !hasBit(image.header.autoclearFeatures, AutoclearFeature.Bitmaps)) return 0n;
  const fields = decodeBitmapsExtension(extension.data);
  checkBitmapsExtension(fields, image.clusterSize);
  const bytes = new Uint8Array(fields.bitmapDirectorySize);
  if (bytes.length > 0 && (await image.storage.read(bytes, fields.bitmapDirectoryOffset)) < bytes.length) {
    throw new Qcow2Error('TRUNCATED', 'bitmap directory lies past the end of the file');
  }
  const diskLength = sectorLength(source);
  const geometry = { clusterSize: image.clusterSize, virtualSize: Number(diskLength) };
  const entries = decodeBitmapDirectory(bytes, fields.nbBitmaps, { checkEntry: (entry) => checkBitmapEntryConstraints(entry, geometry) });
  const target = BigInt(clusterSize);
  const encoder = new TextEncoder();
  let total = 0n;
  let directoryBytes = 0;
  for (const entry of entries) {
    const granularity = 1n << BigInt(entry.granularityBits);
    const bitmapBytes = divRoundUp(divRoundUp(diskLength, granularity), 8n);
    const bitmapClusters = divRoundUp(bitmapBytes, target);
    total += bitmapClusters * target;
    total += roundUp(bitmapClusters * BITMAP_TABLE_ENTRY_BYTES, target);
    directoryBytes += bitmapDirectoryEntrySize(encoder.encode(entry.name).length, 0);
  }
  return total + roundUp(BigInt(directoryBytes), target);
}

function checkOptions(options: MeasureOptions): Qcow2Geometry | undefined {
  if (options.format === 'raw') return undefined;
  if (options.format !== 'qcow2') fail(`Block driver '${String(options.format)}' does not support size measurement`);
  return qcow2Geometry(options);
}

/** qemu-img measure --size N: a new, empty image of `size` bytes. */
export function measureNewImage(size: bigint | number, options: MeasureOptions): MeasureResult {
  const bytes = toBigInt(size, 'image size');
  if (bytes < 0n) fail(`Invalid image size ${bytes}`);
  const geometry = checkOptions(options);
  if (geometry === undefined) {
    const required = roundUp(bytes, SECTOR);
    return { required, fullyAllocated: required };
  }
  checkL1Limit(bytes, geometry);
  const virtualSize = roundUp(bytes, geometry.clusterSize);
  const fullyAllocated = qcow2FullyAllocatedSize(virtualSize, geometry.clusterSize, geometry.refcountOrder, geometry.extendedL2);
  const preallocated = options.preallocation === 'full' || options.preallocation === 'falloc';
  return { required: preallocated ? fullyAllocated : fullyAllocated - virtualSize, fullyAllocated };
}

/**
 * qemu-img measure FILE: a new image holding what `source` shows the guest (its whole chain, or the snapshot
 * view it is). Only the clusters the source really holds data in are required; the metadata counted is always
 * that of a fully allocated image, as qemu counts it.
 */
export async function measureImage(source: BlockDevice, options: MeasureOptions): Promise<MeasureResult> {
  const geometry = checkOptions(options);
  const length = sectorLength(source);
  if (geometry === undefined) return { required: length, fullyAllocated: length };
  checkL1Limit(toBigInt(options.size ?? 0, 'image size'), geometry);
  const virtualSize = roundUp(length, geometry.clusterSize);
  let data: bigint;
  if (options.hasBackingFile || options.preallocation === 'full' || options.preallocation === 'falloc') {
    data = virtualSize;
  } else {
    data = await dataClusterBytes(source, Number(geometry.clusterSize), Number(length));
  }
  const fullyAllocated = qcow2FullyAllocatedSize(virtualSize, geometry.clusterSize, geometry.refcountOrder, geometry.extendedL2);
  const result: MeasureResult = { required: fullyAllocated - virtualSize + data, fullyAllocated };
  // Persistent bitmaps need a qcow2 v3 image on both sides.
  if (geometry.version >= 3 && source instanceof Qcow2Device && source.image.header.version >= 3) {
    result.bitmaps = await persistentBitmapsSize(source, Number(geometry.clusterSize));
  }
  return result;
}
