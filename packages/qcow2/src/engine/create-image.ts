import { Qcow2Error } from '../errors.js';
import {
  AutoclearFeature,
  CompatibleFeature,
  CompressionType,
  HeaderExtensionType,
  IncompatibleFeature,
  MAX_L1_BYTES,
  MIN_EXTENDED_L2_CLUSTER_BITS,
  V2_HEADER_LENGTH,
  V3_HEADER_LENGTH,
} from '../format/constants.js';
import { QEMU_FEATURE_NAMES, encodeFeatureNameTable, encodeStringExtension, type HeaderExtension } from '../format/header-extensions.js';
import { encodeHeader, encodedHeaderSize, setBit, type Qcow2Header } from '../format/header.js';
import { setRefcount } from '../format/refcount-block.js';
import { encodeRefcountTable } from '../format/refcount-table.js';
import { viewOf } from '../format/struct.js';
import type { Storage } from '../io/storage.js';
import { layoutOf } from './image-layout.js';
import { Refcounts } from './refcounts.js';

/** qemu-img create's preallocation modes. */
export type Preallocation = 'off' | 'metadata' | 'falloc' | 'full';

/** qemu-img create -f qcow2's options, in the engine's words. */
export interface CreateQcow2Options {
  size: number;
  clusterSize?: number;
  refcountBits?: number;
  /** '0.10' = version 2, '1.1' = version 3 (default). */
  compat?: '0.10' | '1.1';
  lazyRefcounts?: boolean;
  extendedL2?: boolean;
  compressionType?: 'zlib' | 'zstd';
  backingFile?: string;
  backingFormat?: string;
  /** Name of the external data file, stored as given. The caller creates the file itself. */
  dataFile?: string;
  dataFileRaw?: boolean;
}

function fail(message: string): never {
  throw new Qcow2Error('BAD_ARGUMENT', message);
}

/**
 * Checks option combinations the way qemu-img create does, with qemu's messages, before anything is written
 * (qemu-img leaves no file behind when it refuses; callers that create the file call this first).
 */
export function validateCreateOptions(options: CreateQcow2Options): { clusterBits: number; refcountOrder: number; version: 2 | 3 } {
  const clusterSize = options.clusterSize ?? 65536;
  const clusterBits = Math.log2(clusterSize);
  if (!Number.isInteger(clusterBits) || clusterBits < 9 || clusterBits > 21) {
    fail('Cluster size must be a power of two between 512 and 2048k');
  }
  const refcountBits = options.refcountBits ?? 16;
  const refcountOrder = Math.log2(refcountBits);
  if (!Number.isInteger(refcountOrder) || refcountOrder < 0 || refcountOrder > 6) fail('Refcount width must be a power of two and may not exceed 64 bits');
  const version = options.compat === '0.10' ? 2 : 3;
  if (version === 2) {
    // qemu says "version=v3" (its QAPI name); users type -o compat=, so the hint names that.
    const hint = ' (use compat=1.1 or greater)';
    if (refcountBits !== 16) fail(`Different refcount widths than 16 bits require compatibility level 1.1 or above${hint}`);
    if (options.lazyRefcounts) fail(`Lazy refcounts only supported with compatibility level 1.1 and above${hint}`);
    if (options.extendedL2) fail(`Extended L2 entries are only supported with compatibility level 1.1 and above${hint}`);
    if (options.compressionType === 'zstd') fail(`Non-zlib compression type is only supported with compatibility level 1.1 and above${hint}`);
    if (options.dataFile !== undefined) fail(`External data files are only supported with compatibility level 1.1 and above${hint}`);
  }
  if (options.extendedL2 && clusterBits < MIN_EXTENDED_L2_CLUSTER_BITS) fail('Extended L2 entries are only supported with cluster sizes of at least 16384 bytes');
  if (options.dataFileRaw && options.dataFile === undefined) fail("data-file-raw requires data-file");
  if (options.backingFile !== undefined && options.dataFileRaw) fail('Backing file and data-file-raw cannot be used at the same time');
  if (!Number.isSafeInteger(options.size) || options.size < 0) fail(`Invalid image size ${options.size}`);
  const l2Coverage = (clusterSize / (options.extendedL2 ? 16 : 8)) * clusterSize;
  if (Math.ceil(options.size / l2Coverage) * 8 > MAX_L1_BYTES) fail("The image size is too large for file format 'qcow2' (try using a larger cluster size)");
  return { clusterBits, refcountOrder, version };
}

/**
 * Writes a new, empty qcow2 image into `storage` (emptied first): header, refcount table, one refcount block,
 * and the L1 table, laid out as qemu-img create does (clusters 0, 1, 2, 3…). Larger structures (big L1 tables
 * with small clusters and narrow refcounts) go through the same allocator as every later write.
 */
export async function createQcow2(storage: Storage, options: CreateQcow2Options): Promise<void> {
  const { clusterBits, refcountOrder, version } = validateCreateOptions(options);
  const clusterSize = 2 ** clusterBits;
  const size = Math.ceil(options.size / 512) * 512;
  const extensions: HeaderExtension[] = [];
  if (options.backingFile !== undefined && options.backingFormat !== undefined) {
    extensions.push(encodeStringExtension(HeaderExtensionType.BackingFormat, options.backingFormat));
  }
  if (options.dataFile !== undefined) extensions.push(encodeStringExtension(HeaderExtensionType.ExternalDataFile, options.dataFile));
  if (version === 3) extensions.push(encodeFeatureNameTable(QEMU_FEATURE_NAMES));

  let incompatible = 0n;
  if (options.extendedL2) incompatible = setBit(incompatible, IncompatibleFeature.ExtendedL2, true);
  if (options.compressionType === 'zstd') incompatible = setBit(incompatible, IncompatibleFeature.CompressionType, true);
  if (options.dataFile !== undefined) incompatible = setBit(incompatible, IncompatibleFeature.ExternalDataFile, true);
  const header: Qcow2Header = {
    version,
    backingFileOffset: 0,
    backingFileSize: 0,
    clusterBits,
    size,
    cryptMethod: 0,
    l1Size: 0,
    l1TableOffset: 0,
    refcountTableOffset: clusterSize,
    refcountTableClusters: 1,
    nbSnapshots: 0,
    snapshotsOffset: 0,
    incompatibleFeatures: incompatible,
    compatibleFeatures: options.lazyRefcounts ? setBit(0n, CompatibleFeature.LazyRefcounts, true) : 0n,
    autoclearFeatures: options.dataFileRaw ? setBit(0n, AutoclearFeature.DataFileRaw, true) : 0n,
    refcountOrder,
    headerLength: version === 3 ? V3_HEADER_LENGTH : V2_HEADER_LENGTH,
    compressionType: options.compressionType === 'zstd' ? CompressionType.Zstd : CompressionType.Zlib,
    unknownHeaderBytes: new Uint8Array(0),
    extensions,
    backingFile: options.backingFile,
  };
  // qemu writes the feature name table only with clusters above 4 KiB (and it must fit in cluster 0).
  if (version === 3 && (clusterSize <= 4096 || encodedHeaderSize(header) > clusterSize)) {
    header.extensions = extensions.filter((e) => e.type !== HeaderExtensionType.FeatureNameTable);
  }
  const layout = layoutOf(header);
  header.l1Size = Math.ceil(size / layout.l2Coverage);

  // Cluster 0 header, 1 refcount table, 2 the first refcount block counting clusters 0..2. The header is written
  // last, once everything it names is in place: a create killed before that leaves a file that is no qcow2 image
  // (no magic), never an image that names missing structures.
  if ((await storage.size()) > 0) await storage.truncate(0);
  const table = encodeRefcountTable([2 * clusterSize], clusterSize);
  // Even the narrowest block (512-byte clusters, 64-bit refcounts) covers 64 clusters.
  const block = new Uint8Array(clusterSize);
  for (let cluster = 0; cluster < 3; cluster++) setRefcount(viewOf(block), cluster, layout.refcountBits, 1);
  await storage.write(table, clusterSize);
  await storage.write(block, 2 * clusterSize);
  await storage.truncate(3 * clusterSize);

  const refcounts = await Refcounts.load(storage, layout, clusterSize, 1, async (offset, clusters) => {
    header.refcountTableOffset = offset;
    header.refcountTableClusters = clusters;
  });
  // An empty disk has no L1 table at all (offset 0), as qemu makes it.
  const l1Clusters = Math.ceil((header.l1Size * 8) / clusterSize);
  header.l1TableOffset = l1Clusters === 0 ? 0 : await refcounts.allocate(l1Clusters);
  await refcounts.flush();
  // Like qemu, the file ends where the L1 table's entries end (later allocations still go by refcounts).
  const end = Math.max(await storage.size(), header.l1TableOffset + header.l1Size * 8);
  await storage.truncate(end);
  await storage.write(encodeHeader(header), 0);
  await storage.flush();
}
