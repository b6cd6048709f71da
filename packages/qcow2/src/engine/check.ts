import { Qcow2Error } from '../errors.js';
import type { Storage } from '../io/storage.js';
import { checkOflagCopied, compareRefcounts } from './check-compare.js';
import { CheckPass } from './check-pass.js';
import { CheckAbort, type CheckOptions, type CheckReport } from './check-report.js';
import { calculateRefcounts } from './check-references.js';
import { readSnapshotTable } from './check-snapshot-table.js';
import type { Qcow2Image } from './qcow2-image.js';

export { hex64, type CheckMessage, type CheckOptions, type CheckProblemKind, type CheckReport } from './check-report.js';

/**
 * qemu-img check for qcow2 (qemu 7.2's block/qcow2-refcount.c and qcow2-snapshot.c, rules re-derived, not
 * copied): rebuild the reference count of every host cluster from the metadata, compare it with the stored
 * refcounts, and check what qemu checks on the way. The passes, in qemu's order:
 *
 * 1. the snapshot table (check-snapshot-table.ts);
 * 2. counting references (check-references.ts: calculate_refcounts, the rules of what is counted);
 * 3. comparing them with the stored refcounts, then the COPIED flags (check-compare.ts);
 *
 * over the state of one pass (check-pass.ts): header and layout read afresh from the file, the counted
 * references (reference-counts.ts), the stored refcounts read as qemu reads them (stored-refcounts.ts). A repair
 * (repair.ts) runs the same passes with its hooks. Memory is bounded by the file: one counter per host cluster in
 * a typed array, never per guest cluster.
 */
export class ImageChecker extends CheckPass {
  readSnapshotTable(): Promise<void> {
    return readSnapshotTable(this);
  }

  /** Header, active L1, snapshots, snapshot table, refcount table, bitmaps, refcount blocks. */
  calculateRefcounts(): Promise<void> {
    return calculateRefcounts(this);
  }

  compareRefcounts(fixLeaks: boolean, fixErrors: boolean): Promise<void> {
    return compareRefcounts(this, fixLeaks, fixErrors);
  }

  checkOflagCopied(): Promise<void> {
    return checkOflagCopied(this);
  }

  /** One read-only check: what qemu-img check does without -r. */
  async run(): Promise<void> {
    await this.load();
    await this.readSnapshotTable();
    this.refs = this.newReferenceCounts();
    await this.calculateRefcounts();
    await this.compareRefcounts(false, false);
    await this.checkOflagCopied();
  }
}

/** Runs a checker and turns qemu-style early stops into report.failure. */
export async function runChecker(checker: ImageChecker, body: () => Promise<void>): Promise<CheckReport> {
  try {
    await body();
    return checker.report(undefined);
  } catch (error) {
    if (error instanceof CheckAbort) return checker.report(error.reason);
    throw error instanceof Qcow2Error ? error.withFile(checker.name) : error;
  }
}

/**
 * qemu-img check of one qcow2 image (not its backing files): rebuilds the expected refcount of every host
 * cluster from the metadata and compares it with the stored refcounts. Reads only; the metadata is read from
 * the file afresh, so the image's cached state does not matter.
 */
export async function checkImage(image: Qcow2Image, options: CheckOptions = {}): Promise<CheckReport> {
  return checkStorage(image.storage, options);
}

/**
 * The same check on a qcow2 file given as storage, for images that Qcow2Image.open refuses but qemu-img check
 * still examines (a snapshot table or a snapshot L1 table that does not fit in the file, for instance): the
 * check reads everything itself, tolerating what qemu tolerates.
 */
export async function checkStorage(storage: Storage, options: CheckOptions = {}): Promise<CheckReport> {
  const checker = new ImageChecker(storage, storage.name, options);
  return runChecker(checker, () => checker.run());
}
