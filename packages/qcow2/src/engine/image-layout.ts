import { Qcow2Error, type Qcow2Structure } from '../errors.js';
import {
  AutoclearFeature,
  CompressionType,
  CryptMethod,
  IncompatibleFeature,
  MAX_L1_BYTES,
  MAX_REFCOUNT_TABLE_BYTES,
  MAX_SNAPSHOTS,
  MIN_EXTENDED_L2_CLUSTER_BITS,
  SUBCLUSTERS_PER_CLUSTER,
} from '../format/constants.js';
import { featureNamesOf } from '../format/header-extensions.js';
import { hasBit, incompatibleFeatureName, unknownIncompatibleBits, type Qcow2Header } from '../format/header.js';

/**
 * Sizes derived from a header, computed once and validated: every offset and table size the engine will use is
 * checked here against the spec's and qemu's limits and against the file size, before anything is allocated.
 */
export interface ImageLayout {
  clusterBits: number;
  clusterSize: number;
  extendedL2: boolean;
  /** Bytes per L2 entry: 8, or 16 with extended L2. */
  l2EntryBytes: number;
  l2Entries: number;
  subclusterSize: number;
  /** Guest bytes one L2 table maps. */
  l2Coverage: number;
  refcountBits: number;
  externalDataFile: boolean;
  compressionType: number;
}

export function layoutOf(header: Qcow2Header): ImageLayout {
  const clusterBits = header.clusterBits;
  const clusterSize = 2 ** clusterBits;
  const extendedL2 = hasBit(header.incompatibleFeatures, IncompatibleFeature.ExtendedL2);
  const l2EntryBytes = extendedL2 ? 16 : 8;
  const l2Entries = clusterSize / l2EntryBytes;
  return {
    clusterBits,
    clusterSize,
    extendedL2,
    l2EntryBytes,
    l2Entries,
    subclusterSize: extendedL2 ? clusterSize / SUBCLUSTERS_PER_CLUSTER : clusterSize,
    l2Coverage: l2Entries * clusterSize,
    refcountBits: 2 ** header.refcountOrder,
    externalDataFile: hasBit(header.incompatibleFeatures, IncompatibleFeature.ExternalDataFile),
    compressionType: header.compressionType,
  };
}

function checkTable(what: string, structure: Qcow2Structure, offset: number, bytes: number, layout: ImageLayout, fileSize: number): void {
  if (offset % layout.clusterSize !== 0) {
    throw new Qcow2Error('MISALIGNED_OFFSET', `${what} offset 0x${offset.toString(16)} is not aligned to a cluster`, { structure });
  }
  if (offset + bytes > fileSize) {
    throw new Qcow2Error('TRUNCATED', `${what} (offset 0x${offset.toString(16)}, ${bytes} bytes) lies past the end of the file (${fileSize} bytes)`, { structure });
  }
}

/**
 * The checks qemu's open does (qcow2_do_open), plus checks against the file size that qemu leaves to the first
 * read: a hostile header must fail here with a clear message rather than make the engine allocate or loop.
 */
export function validateHeader(header: Qcow2Header, layout: ImageLayout, fileSize: number, options: { allowUnknownFeatures?: boolean } = {}): void {
  const unknown = unknownIncompatibleBits(header);
  if (unknown.length > 0 && !options.allowUnknownFeatures) {
    const names = unknown.map((bit) => incompatibleFeatureName(bit, featureNamesOf(header.extensions)));
    throw new Qcow2Error('UNSUPPORTED_FEATURE', `unsupported incompatible feature(s): ${names.join(', ')}`);
  }
  if (header.cryptMethod !== CryptMethod.None) {
    throw new Qcow2Error('ENCRYPTED', `encrypted images are not supported (crypt method ${header.cryptMethod})`);
  }
  if (layout.extendedL2 && header.clusterBits < MIN_EXTENDED_L2_CLUSTER_BITS) {
    throw new Qcow2Error('BAD_HEADER', `extended L2 entries need clusters of at least 16 KiB (cluster bits ${header.clusterBits})`);
  }
  const compressionBit = hasBit(header.incompatibleFeatures, IncompatibleFeature.CompressionType);
  if (header.compressionType !== CompressionType.Zlib && header.compressionType !== CompressionType.Zstd) {
    throw new Qcow2Error('UNSUPPORTED_FEATURE', `unknown compression type ${header.compressionType}`);
  }
  if (compressionBit !== (header.compressionType !== CompressionType.Zlib)) {
    throw new Qcow2Error('BAD_HEADER', 'compression type field and the compression type feature bit disagree');
  }
  if (!Number.isSafeInteger(header.size)) throw new Qcow2Error('OFFSET_TOO_LARGE', 'virtual size is too large');

  const l1Bytes = header.l1Size * 8;
  if (l1Bytes > MAX_L1_BYTES) throw new Qcow2Error('L1_TOO_LARGE', `active L1 table too large (${header.l1Size} entries, max ${MAX_L1_BYTES / 8})`);
  const neededL1 = Math.ceil(header.size / layout.l2Coverage);
  if (header.l1Size < neededL1) {
    throw new Qcow2Error('BAD_HEADER', `L1 table is too small (${header.l1Size} entries for a ${header.size}-byte disk, need ${neededL1})`);
  }
  if (header.l1Size > 0) checkTable('L1 table', 'l1-table', header.l1TableOffset, l1Bytes, layout, fileSize);

  // qemu's words: an image must have a refcount table, even one only reads.
  if (header.refcountTableClusters === 0) throw new Qcow2Error('BAD_HEADER', 'Image does not contain a reference count table');
  const refcountTableBytes = header.refcountTableClusters * layout.clusterSize;
  if (refcountTableBytes > MAX_REFCOUNT_TABLE_BYTES) {
    throw new Qcow2Error('REFCOUNT_TABLE_TOO_LARGE', `refcount table too large (${header.refcountTableClusters} clusters, max ${MAX_REFCOUNT_TABLE_BYTES} bytes)`);
  }
  checkTable('refcount table', 'refcount-table', header.refcountTableOffset, refcountTableBytes, layout, fileSize);

  if (header.nbSnapshots > MAX_SNAPSHOTS) {
    throw new Qcow2Error('TOO_MANY_SNAPSHOTS', `too many snapshots (${header.nbSnapshots}, max ${MAX_SNAPSHOTS})`, { structure: 'snapshot-table' });
  }
  if (header.nbSnapshots > 0) checkTable('snapshot table', 'snapshot-table', header.snapshotsOffset, 0, layout, fileSize);
}

/** What qemu checks only when an image is opened for I/O (qemu-img info skips it): a raw data file needs one. */
export function validateForIo(header: Qcow2Header, layout: ImageLayout): void {
  if (!layout.externalDataFile && hasBit(header.autoclearFeatures, AutoclearFeature.DataFileRaw)) {
    throw new Qcow2Error('BAD_HEADER', 'data-file-raw requires a data file');
  }
}
