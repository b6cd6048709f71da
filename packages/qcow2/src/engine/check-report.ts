/**
 * What a check reports, in qemu-img check's terms: its messages (qemu's lines, each with a kind a program can
 * switch on), its counters, and the early stop qemu calls a failed check. Shared by the check's passes
 * (check-*.ts), the repair, and the CLI's output.
 */

/** One line of what the check found or did, as qemu prints it on stderr, with a machine-readable kind. */
export interface CheckMessage {
  kind: CheckProblemKind;
  /** qemu's line, without the trailing newline. */
  text: string;
}

/** What a check message is about (refcounts, L1/L2 tables, snapshots, bitmaps, a repair). */
export type CheckProblemKind =
  /** A cluster's refcount is higher than its references ("Leaked cluster"). */
  | 'leak'
  /** A cluster's refcount is lower than its references ("ERROR cluster ... refcount=... reference=..."). */
  | 'refcount-too-low'
  | 'refcount-overflow'
  /** A stored refcount could not be read (its refcount block offset is unaligned). */
  | 'refcount-unreadable'
  | 'copied-flag'
  | 'reserved-bits'
  | 'misaligned'
  | 'past-end-of-file'
  | 'subcluster-bitmap'
  | 'compressed-cluster'
  | 'refcount-block'
  | 'snapshot'
  | 'bitmap'
  /** Progress of a repair: "Rebuilding refcount structure" and qemu's refusals. */
  | 'repair';

/** A check's findings, in qemu-img check's terms (corruptions, leaks, check errors, cluster counts). */
export interface CheckReport {
  /** The image's name (its storage name). */
  filename: string;
  /** qcow2, or vmdk/vhdx for the reports the CLI makes from their devices' checks. */
  format: 'qcow2' | 'vmdk' | 'vhdx';
  /** Internal errors (qemu's check-errors): the check could not look at everything. */
  checkErrors: number;
  corruptions: number;
  leaks: number;
  corruptionsFixed: number;
  leaksFixed: number;
  /** One past the last cluster in use, in bytes (0 when nothing is in use). */
  imageEndOffset: number;
  /** Guest clusters: ceil(virtual size / cluster size). */
  totalClusters: number;
  allocatedClusters: number;
  fragmentedClusters: number;
  compressedClusters: number;
  /** Everything found (and repaired), in qemu's order and words. */
  messages: CheckMessage[];
  /**
   * Set when the check stopped before the end (qemu-img prints "Check failed: <failure>", no report, and exits
   * 1): the reason in qemu's words (strerror), such as "Input/output error". The counts are partial.
   */
  failure: string | undefined;
}

/** Options of a check or repair: a message callback and the bound on host clusters counted. */
export interface CheckOptions {
  /** Called with each message as it is found (the report keeps them all as well). */
  onMessage?: (message: CheckMessage) => void;
  /**
   * The most host clusters (file size / cluster size) the check will hold a counter for; larger files are
   * refused with a clear error rather than exhausting memory. Default 2^28 (1 GiB of counters).
   */
  maxClusters?: number;
}

export const DEFAULT_MAX_CHECK_CLUSTERS = 2 ** 28;

/** Thrown inside the check to stop it the way qemu's `goto fail` does; turned into report.failure. */
export class CheckAbort extends Error {
  constructor(readonly reason: string) {
    super(reason);
  }
}

/** C's %lx of a 64-bit value given as halves. */
export function hex64(hi: number, lo: number): string {
  return hi === 0 ? (lo >>> 0).toString(16) : (hi >>> 0).toString(16) + (lo >>> 0).toString(16).padStart(8, '0');
}

/** C's %#lx: "0" for zero, else 0x-prefixed. */
export function hexAlt(value: number | bigint): string {
  return value === 0 || value === 0n ? '0' : `0x${value.toString(16)}`;
}

/** Counters as qemu keeps them in BdrvCheckResult. */
export interface CheckCounters {
  checkErrors: number;
  corruptions: number;
  leaks: number;
  corruptionsFixed: number;
  leaksFixed: number;
  allocatedClusters: number;
  fragmentedClusters: number;
  compressedClusters: number;
}

export function zeroCounters(): CheckCounters {
  return {
    checkErrors: 0,
    corruptions: 0,
    leaks: 0,
    corruptionsFixed: 0,
    leaksFixed: 0,
    allocatedClusters: 0,
    fragmentedClusters: 0,
    compressedClusters: 0,
  };
}
