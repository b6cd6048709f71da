/**
 * Every failure the engine reports is a Qcow2Error with a stable `code`, so callers (the CLI, OpenStack-like
 * services) can switch on it instead of parsing messages. `file` names the image the problem is in.
 */
export type Qcow2ErrorCode =
  | 'BAD_MAGIC'
  | 'UNSUPPORTED_VERSION'
  | 'BAD_HEADER'
  | 'UNSUPPORTED_FEATURE'
  | 'TRUNCATED'
  | 'OFFSET_TOO_LARGE'
  | 'MISALIGNED_OFFSET'
  | 'L1_TOO_LARGE'
  | 'REFCOUNT_TABLE_TOO_LARGE'
  | 'TOO_MANY_SNAPSHOTS'
  | 'BAD_SNAPSHOT_TABLE'
  | 'BAD_BITMAP_DIRECTORY'
  | 'BAD_EXTENSION'
  | 'BAD_L2_ENTRY'
  | 'COMPRESSION_ERROR'
  | 'ENCRYPTED'
  | 'BACKING_LOOP'
  | 'CHAIN_TOO_DEEP'
  | 'BACKING_NOT_FOUND'
  | 'DATA_FILE_NOT_FOUND'
  | 'UNTRUSTED_REFERENCE'
  | 'SNAPSHOT_NOT_FOUND'
  | 'BITMAP_NOT_FOUND'
  | 'BAD_ARGUMENT'
  /** The size asked for is more than the format can address (qemu's EFBIG; qemu-img create words it itself). */
  | 'SIZE_TOO_LARGE'
  | 'OUT_OF_RANGE'
  | 'READ_ONLY'
  | 'IO_ERROR'
  /** Another process (a running qemu) uses the image in a way this open cannot share: qemu's image locks. */
  | 'IMAGE_LOCKED'
  | 'UNKNOWN_FORMAT'
  | 'RANGE_NOT_SUPPORTED'
  | 'TIMEOUT'
  | 'CODEC_UNAVAILABLE'
  /** A structure's checksum does not match its bytes (VHD footer, VHDX header, region table, log entry). */
  | 'BAD_CHECKSUM'
  /** A block or grain table (VHD/VHDX BAT, VMDK grain directory/tables) is malformed or points outside the file. */
  | 'BAD_ALLOCATION_TABLE'
  /** A VHDX image whose log must be replayed before it can be read (qemu refuses it read-only). */
  | 'LOG_REPLAY_NEEDED';

/**
 * The on-disk structure a problem was found in, where the code alone does not say it: a TRUNCATED snapshot table
 * is not a TRUNCATED L1 table (qemu-img check reads past the first and stops at the second).
 */
export type Qcow2Structure = 'header' | 'l1-table' | 'refcount-table' | 'snapshot-table' | 'snapshot-l1-table';

/** Where a {@link Qcow2Error} was found, and what else a caller may switch on besides its code. */
export interface Qcow2ErrorOptions {
  file?: string;
  cause?: unknown;
  structure?: Qcow2Structure;
  /** The file does not exist (ENOENT, HTTP 404, not among the files a browser user chose). */
  missing?: boolean;
}

/** The one error class of the engine: `code` says what went wrong (see {@link errorCodes}), `file` where; the message is qemu-like and says what to do when something can be done. */
export class Qcow2Error extends Error {
  readonly code: Qcow2ErrorCode;
  /** The image (or other file) the problem was found in, when there is one. */
  readonly file: string | undefined;
  /** The structure the problem is in, when the code alone does not say it. */
  readonly structure: Qcow2Structure | undefined;
  /** An `IO_ERROR` because the file does not exist, so callers need not read the message to tell. */
  readonly missing: boolean;

  constructor(code: Qcow2ErrorCode, message: string, options: Qcow2ErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'Qcow2Error';
    this.code = code;
    this.file = options.file;
    this.structure = options.structure;
    this.missing = options.missing === true;
  }

  /** The same error, attributed to `file` when it was not attributed yet. */
  withFile(file: string): Qcow2Error {
    return this.file !== undefined ? this : this.copyWith({ file });
  }

  /** The same error, said to be in `structure` when no structure was named yet. */
  inStructure(structure: Qcow2Structure): Qcow2Error {
    return this.structure !== undefined ? this : this.copyWith({ structure });
  }

  private copyWith(changes: Qcow2ErrorOptions): Qcow2Error {
    const options: Qcow2ErrorOptions = { cause: this.cause, missing: this.missing };
    if (this.file !== undefined) options.file = this.file;
    if (this.structure !== undefined) options.structure = this.structure;
    const copy = new Qcow2Error(this.code, this.message, { ...options, ...changes });
    copy.stack = this.stack;
    return copy;
  }
}

/** Whether `error` is a {@link Qcow2Error} (a type guard for catch blocks). */
export function isQcow2Error(error: unknown): error is Qcow2Error {
  return error instanceof Qcow2Error;
}
