import type { Qcow2ErrorCode } from '../errors.js';

/**
 * Every {@link Qcow2Error} `code`, with what it means. The codes are stable: switch on them, never on messages.
 * (Typed as a record of every code, so a code added to the engine cannot go undocumented here.)
 *
 * @example
 * ```ts
 * import { errorCodes, isQcow2Error, open, memoryHost } from '@qcowkit/qcow2';
 * try {
 *   await open('missing.qcow2', { host: memoryHost() });
 * } catch (error) {
 *   if (isQcow2Error(error)) console.log(error.code, errorCodes[error.code]); // IO_ERROR …
 * }
 * ```
 */
export const errorCodes: Readonly<Record<Qcow2ErrorCode, string>> = {
  BAD_MAGIC: 'The file does not start with the qcow2 magic: it is not a qcow2 image.',
  UNSUPPORTED_VERSION: 'A qcow2 version other than 2 or 3.',
  BAD_HEADER: 'A header field is out of range or inconsistent (cluster bits, sizes, offsets).',
  UNSUPPORTED_FEATURE: 'The image uses a feature the engine does not implement (an unknown incompatible bit, a compression type…).',
  TRUNCATED: 'A structure the image points to lies past the end of the file.',
  OFFSET_TOO_LARGE: 'An offset or size above 2^53, which the engine refuses rather than round.',
  MISALIGNED_OFFSET: 'A table or cluster offset that is not cluster-aligned where the format requires it.',
  L1_TOO_LARGE: "The L1 table is larger than qemu's limit (32 MiB).",
  REFCOUNT_TABLE_TOO_LARGE: "The refcount table is larger than qemu's limit (8 MiB).",
  TOO_MANY_SNAPSHOTS: 'More internal snapshots than qemu allows (65536).',
  BAD_SNAPSHOT_TABLE: 'The snapshot table cannot be decoded (sizes, ids, names, extra data).',
  BAD_BITMAP_DIRECTORY: 'The persistent bitmap directory or extension is invalid.',
  BAD_EXTENSION: 'A header extension is malformed (length past the cluster, bad backing format name…).',
  BAD_L2_ENTRY: 'An L2 entry is invalid (reserved bits, a compressed cluster out of range…).',
  COMPRESSION_ERROR: 'A compressed cluster does not decompress into exactly one cluster.',
  ENCRYPTED: 'The image is encrypted (AES or LUKS), which the engine does not read.',
  BACKING_LOOP: 'The backing chain refers back to an image already in it.',
  CHAIN_TOO_DEEP: 'The backing chain is deeper than the limit (64 images by default).',
  BACKING_NOT_FOUND: 'The backing file cannot be opened (missing, unreadable, not among the files given).',
  DATA_FILE_NOT_FOUND: 'The external data file is missing or cannot be opened.',
  UNTRUSTED_REFERENCE: 'The image names another file (backing or data file) and was opened as untrusted.',
  SNAPSHOT_NOT_FOUND: 'No internal snapshot has that id or name.',
  BITMAP_NOT_FOUND: 'No persistent dirty bitmap has that name.',
  BAD_ARGUMENT: "An argument is invalid (a size, a cluster size, an option qemu-img would refuse); qemu's message.",
  SIZE_TOO_LARGE: 'A new image larger than its format can address (a VHD over 2040 GiB); qemu-img create words it "The image size is too large for file format".',
  OUT_OF_RANGE: 'A read or write past the end of the virtual disk.',
  READ_ONLY: 'A write to an image (or storage) opened read-only, or to a snapshot view.',
  IO_ERROR: 'The host could not read or write a file (missing file, permission, an HTTP error status).',
  IMAGE_LOCKED: 'Another process (a running qemu) holds the image in a way this open cannot share: qemu\'s image locks ("Failed to get \"write\" lock"); read-only opens can pass forceShare (-U).',
  UNKNOWN_FORMAT: 'A format the engine does not know (other than raw, qcow2, vpc, vmdk and vhdx) was asked for.',
  RANGE_NOT_SUPPORTED: 'An HTTP server answered a Range request with the whole file (200) or without Content-Range.',
  TIMEOUT: 'An HTTP request did not complete in time, after its retries.',
  CODEC_UNAVAILABLE: 'A compression codec (the zstd WASM module) could not be loaded, or is not available on this host.',
  BAD_CHECKSUM: "A structure's checksum does not match its bytes (VHD footer, VHDX header, region table or log entry).",
  BAD_ALLOCATION_TABLE: 'A block or grain table (VHD/VHDX BAT, VMDK grain directory or tables) is malformed, too large, or points past the end of the file.',
  LOG_REPLAY_NEEDED: 'A VHDX image with a log that must be replayed before it can be read (qemu-img check -r all replays it).',
};
