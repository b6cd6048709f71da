/**
 * Typed errors with stable codes, so callers (the CLI, services) switch on `code` instead of parsing messages.
 * HypervisorError: what the hypervisor (virsh/libvirt) refused or failed to do. SnapshotError: what the snapshot
 * flows themselves decided (bad arguments, a disk they cannot handle, a guest left in a state to look at).
 */

export type HypervisorErrorCode =
  /** virsh is not installed (or not in PATH). */
  | 'VIRSH_NOT_FOUND'
  /** No connection to the hypervisor (libvirtd not running, wrong URI, no permission). */
  | 'CONNECT_FAILED'
  | 'NO_DOMAIN'
  /** The operation is not valid in the domain's current state (e.g. blockcopy on a persistent domain). */
  | 'OPERATION_INVALID'
  /** This virsh, libvirt or QEMU does not support the operation or one of its flags. */
  | 'UNSUPPORTED'
  /** The guest agent is not configured or not responding (quiesce, fsfreeze). */
  | 'AGENT_UNAVAILABLE'
  | 'NO_BLOCK_JOB'
  | 'BLOCK_JOB_FAILED'
  | 'TIMEOUT'
  /** virsh answered something this package cannot read (XML or --raw output). */
  | 'BAD_OUTPUT'
  | 'FAILED';

export class HypervisorError extends Error {
  readonly code: HypervisorErrorCode;
  /** The command that failed, as an argument array (no shell involved), when there was one. */
  readonly command: readonly string[] | undefined;

  constructor(code: HypervisorErrorCode, message: string, options: { command?: readonly string[]; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'HypervisorError';
    this.code = code;
    this.command = options.command;
  }
}

export function isHypervisorError(error: unknown, code?: HypervisorErrorCode): error is HypervisorError {
  return error instanceof HypervisorError && (code === undefined || error.code === code);
}

export type SnapshotErrorCode =
  | 'BAD_ARGUMENT'
  /** The domain has no disk with that target, or no disk at all. */
  | 'NO_SUCH_DISK'
  /** A network, volume or other disk that is not a local file or block device. */
  | 'UNSUPPORTED_DISK'
  | 'UNSUPPORTED_FORMAT'
  /** The images' backing references do not match the chain libvirt describes. */
  | 'CHAIN_MISMATCH'
  /** A backing file whose format neither the domain XML nor the image header states (never probed). */
  | 'BACKING_FORMAT_UNKNOWN'
  /** The guest is in a state the requested mode cannot snapshot (e.g. live on a shut-off guest). */
  | 'INVALID_STATE'
  /** A block job is already running on the disk (someone else's: it is not touched). */
  | 'BLOCK_JOB_ACTIVE'
  /** --require-quiesce and the guest agent could not freeze the file systems. */
  | 'QUIESCE_FAILED'
  /** Active commit of the temporary overlay failed twice: the guest keeps running on it (nothing is lost). */
  | 'OVERLAY_KEPT'
  /** The snapshot failed and putting the guest back failed too; the message says both. */
  | 'RESTORE_FAILED'
  /** Another qcowkit run is working on the domain (its intent log names a live process). */
  | 'IN_PROGRESS'
  /** A killed run left the domain to recover (its intent log, or a qcowkit overlay or copy job): `vm recover`. */
  | 'LEFTOVERS'
  /** An intent log that cannot be read. */
  | 'BAD_INTENT_LOG'
  /** Recovery could not bring everything back; the message says what is left and why. */
  | 'RECOVERY_INCOMPLETE';

export class SnapshotError extends Error {
  readonly code: SnapshotErrorCode;
  /** The domain concerned, when there is one. */
  readonly domain: string | undefined;
  /** Failures of the steps that put the guest back, after the error that stopped the snapshot. */
  readonly restoreErrors: readonly unknown[];

  constructor(code: SnapshotErrorCode, message: string, options: { domain?: string; cause?: unknown; restoreErrors?: readonly unknown[] } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'SnapshotError';
    this.code = code;
    this.domain = options.domain;
    this.restoreErrors = options.restoreErrors ?? [];
  }
}

export function isSnapshotError(error: unknown, code?: SnapshotErrorCode): error is SnapshotError {
  return error instanceof SnapshotError && (code === undefined || error.code === code);
}

export function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
