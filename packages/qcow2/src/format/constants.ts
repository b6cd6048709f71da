/** Numbers fixed by the qcow2 specification and by qemu's limits (qemu 7.2, block/qcow2.h). */
export const QCOW2_MAGIC = 0x514649fb;
/** Smallest cluster size, as a power of two (512 bytes). */
export const MIN_CLUSTER_BITS = 9;
/** Largest cluster size, as a power of two (2 MiB). */
export const MAX_CLUSTER_BITS = 21;
/** Smallest cluster size with extended L2 entries, as a power of two (16 KiB). */
export const MIN_EXTENDED_L2_CLUSTER_BITS = 14;
/** Length of a version 2 header, in bytes. */
export const V2_HEADER_LENGTH = 72;
/** Shortest version 3 header, in bytes. */
export const V3_MIN_HEADER_LENGTH = 104;
/** The version 3 header qemu writes: up to the compression type byte and its padding to 8 bytes. */
export const V3_HEADER_LENGTH = 112;
/** Longest backing file name qemu accepts, in bytes. */
export const MAX_BACKING_FILE_NAME = 1023;
/** qemu's QCOW_MAX_L1_SIZE: 32 MiB of L1 table. */
export const MAX_L1_BYTES = 32 * 1024 * 1024;
/** qemu's QCOW_MAX_REFTABLE_SIZE: 8 MiB of refcount table. */
export const MAX_REFCOUNT_TABLE_BYTES = 8 * 1024 * 1024;
/** Most internal snapshots qemu allows in one image. */
export const MAX_SNAPSHOTS = 65536;
/** Largest snapshot table extra data qemu accepts, in bytes. */
export const MAX_SNAPSHOT_EXTRA_DATA = 1024;
/** Longest snapshot id qemu accepts, in bytes. */
export const MAX_SNAPSHOT_ID_LEN = 128;
/** Longest snapshot name qemu accepts, in bytes. */
export const MAX_SNAPSHOT_NAME_LEN = 1024;
/** qemu's QCOW_MAX_SNAPSHOTS_SIZE: the whole table at most 64 MiB. */
export const MAX_SNAPSHOT_TABLE_BYTES = 64 * 1024 * 1024;
/** Subclusters per cluster with extended L2 entries. */
export const SUBCLUSTERS_PER_CLUSTER = 32;

/** Bits of the header's incompatible features word: a reader that does not know a set bit must refuse the image. */
export const IncompatibleFeature = {
  Dirty: 0,
  Corrupt: 1,
  ExternalDataFile: 2,
  CompressionType: 3,
  ExtendedL2: 4,
} as const;
export type IncompatibleFeature = (typeof IncompatibleFeature)[keyof typeof IncompatibleFeature];
/** The incompatible feature bits the engine understands. */
export const KNOWN_INCOMPATIBLE_MASK = 0b11111;

/** Bits of the header's compatible features word. */
export const CompatibleFeature = {
  LazyRefcounts: 0,
} as const;
export type CompatibleFeature = (typeof CompatibleFeature)[keyof typeof CompatibleFeature];

/** Bits of the header's autoclear features word (cleared by writers that do not know them). */
export const AutoclearFeature = {
  Bitmaps: 0,
  DataFileRaw: 1,
} as const;
export type AutoclearFeature = (typeof AutoclearFeature)[keyof typeof AutoclearFeature];

/** Values of the header's compression type byte (version 3). */
export const CompressionType = {
  Zlib: 0,
  Zstd: 1,
} as const;
export type CompressionType = (typeof CompressionType)[keyof typeof CompressionType];
/** The names qemu gives the compression types (the compression_type option, qemu-img info), by type number. */
export const COMPRESSION_TYPE_NAMES = ['zlib', 'zstd'] as const;
export type CompressionTypeName = (typeof COMPRESSION_TYPE_NAMES)[number];
/** The name of a compression type number the engine reads (zlib for any other: such an image does not open). */
export function compressionTypeName(type: number): CompressionTypeName {
  return COMPRESSION_TYPE_NAMES[type] ?? 'zlib';
}
export function isCompressionTypeName(name: string): name is CompressionTypeName {
  return (COMPRESSION_TYPE_NAMES as readonly string[]).includes(name);
}

/** Header extension type codes. */
export const HeaderExtensionType = {
  End: 0,
  BackingFormat: 0xe2792aca,
  FeatureNameTable: 0x6803f857,
  Bitmaps: 0x23852875,
  FullDiskEncryption: 0x0537be77,
  ExternalDataFile: 0x44415441,
} as const;
export type HeaderExtensionType = (typeof HeaderExtensionType)[keyof typeof HeaderExtensionType];

/** Values of the header's crypt method field. */
export const CryptMethod = {
  None: 0,
  Aes: 1,
  Luks: 2,
} as const;
export type CryptMethod = (typeof CryptMethod)[keyof typeof CryptMethod];
