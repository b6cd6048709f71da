import { Qcow2Error } from '../errors.js';
import { IncompatibleFeature, MAX_REFCOUNT_TABLE_BYTES } from '../format/constants.js';
import { setBit } from '../format/header.js';
import { setRefcount } from '../format/refcount-block.js';
import { decodeSnapshotEntry, encodeSnapshotTable, type SnapshotEntry } from '../format/snapshot-table.js';
import { encodeRefcountTable } from '../format/refcount-table.js';
import { viewOf } from '../format/struct.js';
import { ZERO_LO, setSubclusterBitmaps } from '../format/table-entries.js';
import { readZeroPadded, type Storage } from '../io/storage.js';
import { CheckAbort, zeroCounters, type CheckOptions, type CheckReport } from './check-report.js';
import { ImageChecker, runChecker } from './check.js';
import { writeHeaderFields, type HeaderFieldChanges } from './header-rewrite.js';
import type { Qcow2Image } from './qcow2-image.js';
import { Refcounts } from './refcounts.js';

/**
 * qemu-img check -r: `leaks` sets the refcount of leaked clusters to their reference count; `all` also raises
 * refcounts that are too low, fixes COPIED flags, zeroes misaligned preallocated entries, rebuilds the refcount
 * structures when they cannot be trusted (a refcount of 0 for a referenced cluster, a refcount block past the end
 * of the file, unaligned or overlapping), rewrites incomplete snapshot table entries, and clears the dirty and
 * corrupt bits once the image is consistent.
 *
 * Just over 400 lines: the repairer is a check pass (it extends ImageChecker) whose steps share the pass's
 * state; each step is a method so its write order reads top to bottom.
 *
 * The order keeps a crash harmless: entries are cleared before refcounts drop; a rebuilt refcount table and its
 * blocks are written past the end of the file, where nothing points, and flushed before one header write switches
 * to them; the dirty bit is cleared last. Nothing a repair does changes what the guest reads.
 */
export type RepairMode = 'leaks' | 'all';

/** What a repair found and fixed, and the check run after it. */
export interface RepairReport {
  /**
   * The pass that repaired (qemu's first pass): what it found, what it fixed (leaksFixed, corruptionsFixed) and
   * what is left. Its `failure` is set when the repair stopped, in qemu's words: "Input/output error" when
   * `leaks` mode meets refcount structures that need a rebuild (the messages say so).
   */
  repair: CheckReport;
  /** The check run again after something was fixed ("Double checking the fixed image now..."). */
  recheck: CheckReport | undefined;
}

class ImageRepairer extends ImageChecker {
  constructor(
    storage: Storage,
    name: string,
    private readonly mode: RepairMode,
    options: CheckOptions,
  ) {
    super(storage, name, options);
  }

  private ranges: Array<{ offset: number; size: number; what: string }> | undefined;

  override async load(): Promise<void> {
    await super.load();
    this.ranges = undefined;
  }

  /**
   * Ranges of metadata a repair must never write over (qemu's overlap check in its default mode: header, L1
   * tables, refcount table and blocks, snapshot table), for the structures as loaded.
   */
  private metadataRanges(): Array<{ offset: number; size: number; what: string }> {
    if (this.ranges !== undefined) return this.ranges;
    const cs = this.clusterSize;
    const ranges = [
      { offset: 0, size: cs, what: 'qcow2_header' },
      { offset: this.header.l1TableOffset, size: this.header.l1Size * 8, what: 'active L1 table' },
      { offset: this.header.refcountTableOffset, size: this.header.refcountTableClusters * cs, what: 'refcount table' },
      { offset: this.header.snapshotsOffset, size: this.snapshotTableSize, what: 'snapshot table' },
    ];
    const { hi } = this.stored.table;
    for (let i = 0; i < hi.length; i++) {
      const offset = this.stored.blockOffset(i);
      if (offset !== 0) ranges.push({ offset: offset - (offset % cs), size: cs, what: 'refcount block' });
    }
    for (const sn of this.snapshots) ranges.push({ offset: sn.l1TableOffset, size: sn.l1Size * 8, what: 'inactive L1 table' });
    this.ranges = ranges.filter((r) => r.size > 0);
    return this.ranges;
  }

  private overlap(offset: number, size: number): string | undefined {
    const cs = this.clusterSize;
    const start = offset - (offset % cs);
    const end = Math.ceil((offset + size) / cs) * cs;
    for (const range of this.metadataRanges()) {
      if (range.offset < end && start < range.offset + range.size) return range.what;
    }
    return undefined;
  }

  private async writeSync(bytes: Uint8Array, offset: number): Promise<void> {
    await this.storage.write(bytes, offset);
    await this.storage.flush();
  }

  /** Header fields changed in place (one write, see writeHeaderFields), then flushed. */
  private async writeHeaderSync(changes: HeaderFieldChanges): Promise<void> {
    await writeHeaderFields(this.storage, this.header, changes);
    await this.storage.flush();
  }

  override async repairPreallocatedEntry(l2Offset: number, index: number, zeroBits: number, allocBits: number): Promise<boolean> {
    const { l2EntryBytes, extendedL2 } = this.layout;
    const at = l2Offset + index * l2EntryBytes;
    const entry = new Uint8Array(l2EntryBytes);
    const view = viewOf(entry);
    if (extendedL2) {
      // Offset 0; every subcluster that was allocated or zero reads as zero; unallocated ones stay unallocated.
      setSubclusterBitmaps(view, 0, zeroBits | allocBits, 0);
    } else {
      view.setUint32(4, ZERO_LO); // the zero flag alone: a plain zero cluster
    }
    if (this.overlap(at, l2EntryBytes) !== undefined) {
      this.message('misaligned', 'ERROR: Overlap check failed');
      this.res.checkErrors++;
      throw new CheckAbort('Input/output error');
    }
    await this.writeSync(entry, at);
    return true;
  }

  override async repairRefcount(cluster: number, value: number): Promise<boolean> {
    return this.stored.set(cluster, value);
  }

  override async refcountRepairsDone(): Promise<void> {
    await this.stored.flush();
    await this.storage.flush();
  }

  override async repairL1Entry(index: number, hi: number, lo: number): Promise<void> {
    const entry = new Uint8Array(8);
    viewOf(entry).setUint32(0, hi);
    viewOf(entry).setUint32(4, lo);
    await this.writeSync(entry, this.header.l1TableOffset + index * 8);
  }

  override async repairL2Table(offset: number, table: Uint8Array): Promise<void> {
    if (this.overlap(offset, table.length) !== undefined) {
      this.message('copied-flag', 'ERROR: Could not write L2 table; metadata overlap check failed: Input/output error');
      this.res.checkErrors++;
      throw new CheckAbort('Input/output error');
    }
    await this.storage.write(table, offset);
  }

  /**
   * Writes a new refcount table and blocks past the end of the file from the computed references and switches
   * the header to them in one write. Until that write the new clusters are unreferenced. The old table and
   * blocks stay counted in the new blocks (they are in use until the switch), so after it they are merely
   * leaked, and the leak pass that follows frees them, as qemu does. Old refcount blocks that lay past the end
   * of the file are not carried over: the new table does not point there.
   */
  async rebuildRefcountStructure(): Promise<void> {
    const refs = this.refs;
    const fileClusters = this.fileClusters();
    for (const cluster of this.refcountStructureRefs) if (cluster >= fileClusters) refs.set(cluster, refs.get(cluster) - 1);
    const cs = this.clusterSize;
    const epb = this.stored.entriesPerBlock;
    let highest = -1;
    const used = new Set<number>();
    for (let c = 0; c < refs.size; c++) {
      if (refs.get(c) > 0) {
        highest = c;
        used.add(Math.floor(c / epb));
      }
    }
    const start = Math.max(this.fileClusters(), highest + 1);
    // Blocks for every range in use plus the ranges of the new structures themselves, and a table for them all.
    let blockIndexes = new Set(used);
    let tableClusters = 0;
    for (;;) {
      let maxIndex = 0;
      for (const b of blockIndexes) if (b > maxIndex) maxIndex = b;
      const neededTable = Math.max(1, Math.ceil(((maxIndex + 1) * 8) / cs));
      const end = start + blockIndexes.size + neededTable;
      const next = new Set(used);
      for (let b = Math.floor(start / epb); b <= Math.floor((end - 1) / epb); b++) next.add(b);
      if (next.size === blockIndexes.size && neededTable === tableClusters) break;
      blockIndexes = next;
      tableClusters = neededTable;
    }
    if (tableClusters * cs > MAX_REFCOUNT_TABLE_BYTES) {
      throw new Qcow2Error('REFCOUNT_TABLE_TOO_LARGE', 'the rebuilt refcount table would exceed 8 MiB: image too large for its cluster size', {
        file: this.name,
      });
    }
    const sorted = [...blockIndexes].sort((a, b) => a - b);
    const blockPlace = new Map<number, number>();
    sorted.forEach((b, i) => blockPlace.set(b, start + i));
    const tableStart = start + sorted.length;
    const end = tableStart + tableClusters;
    if (!refs.grow(end)) {
      this.res.checkErrors++;
      throw new CheckAbort('Cannot allocate memory');
    }
    for (let c = start; c < end; c++) refs.set(c, 1);

    // 1. The blocks, each from the counts of its range.
    const bits = this.layout.refcountBits;
    const block = new Uint8Array(cs);
    const blockView = viewOf(block);
    for (const b of sorted) {
      block.fill(0);
      const first = b * epb;
      const last = Math.min(refs.size, first + epb);
      for (let c = first; c < last; c++) {
        const value = refs.get(c);
        if (value !== 0) setRefcount(blockView, c - first, bits, value);
      }
      await this.storage.write(block, blockPlace.get(b)! * cs);
    }
    // 2. The table.
    const table = encodeRefcountTable(new Map([...blockPlace].map(([b, place]) => [b, place * cs])), tableClusters * cs);
    await this.storage.write(table, tableStart * cs);
    await this.storage.flush();
    // 3. The header, in one write.
    await this.writeHeaderSync({ refcountTableOffset: tableStart * cs, refcountTableClusters: tableClusters });
  }

  /**
   * qcow2_write_snapshots after a check found incomplete v3 entries: the table is written anew, every entry with
   * the 24 bytes of known extra data, in clusters allocated through the (now consistent) refcounts; the header
   * switches to it; the old table is freed last.
   */
  async rewriteSnapshotTable(): Promise<void> {
    const cs = this.clusterSize;
    const oldBytes = new Uint8Array(this.snapshotTableSize);
    await readZeroPadded(this.storage, oldBytes, this.header.snapshotsOffset);
    const entries: SnapshotEntry[] = [];
    let position = 0;
    for (let i = 0; i < this.snapshots.length; i++) {
      const decoded = decodeSnapshotEntry(oldBytes, position);
      if ('needed' in decoded) throw new Qcow2Error('BAD_SNAPSHOT_TABLE', `snapshot table entry ${i} could not be read`, { file: this.name });
      entries.push(completeEntry(decoded.entry, this.header.size));
      position = decoded.next;
    }
    const bytes = encodeSnapshotTable(entries);
    const refcounts = await Refcounts.load(this.storage, this.layout, this.header.refcountTableOffset, this.header.refcountTableClusters, (offset, clusters) =>
      this.writeHeaderSync({ refcountTableOffset: offset, refcountTableClusters: clusters }),
    );
    const clusters = Math.max(1, Math.ceil(bytes.length / cs));
    const offset = await refcounts.allocate(clusters);
    await refcounts.flush();
    await this.storage.write(bytes, offset);
    await this.storage.flush();
    const oldOffset = this.header.snapshotsOffset;
    await this.writeHeaderSync({ nbSnapshots: entries.length, snapshotsOffset: offset });
    if (oldOffset !== 0 && this.snapshotTableSize > 0) await refcounts.free(oldOffset, Math.ceil(this.snapshotTableSize / cs));
    await refcounts.flush();
    await this.storage.flush();
  }

  /** qcow2_mark_corrupt: sets the corrupt bit, so nothing writes to the image until a repair succeeds. */
  override markCorrupt(): () => Promise<void> {
    return async () => {
      if (this.header.version < 3) return;
      await this.writeHeaderSync({ incompatibleFeatures: setBit(this.header.incompatibleFeatures, IncompatibleFeature.Corrupt, true) });
    };
  }

  /** qcow2_mark_clean + qcow2_mark_consistent: clears the dirty and corrupt bits, last. */
  async markClean(): Promise<void> {
    if (this.header.version < 3) return;
    let features = this.header.incompatibleFeatures;
    features = setBit(features, IncompatibleFeature.Dirty, false);
    features = setBit(features, IncompatibleFeature.Corrupt, false);
    if (features === this.header.incompatibleFeatures) return;
    await this.storage.flush();
    await this.writeHeaderSync({ incompatibleFeatures: features });
  }

  /**
   * A table that starts inside the file but runs a cluster or more past its end is not counted, so its clusters
   * inside the file would look leaked and be freed while the header still points at them (qemu does free them).
   * Nothing has been written yet: stop here.
   */
  private refuseUnsafe(): void {
    const region = this.truncatedRegions[0];
    if (region === undefined) return;
    throw new Qcow2Error(
      'TRUNCATED',
      `metadata at offset 0x${region.offset.toString(16)} (${region.size} bytes) runs past the end of the file (${this.fileSize} bytes): ` +
        'a repair would free clusters it still uses, so nothing was repaired; copy the readable data out with convert instead',
      { file: this.name },
    );
  }

  /** qemu's qcow2_co_check_locked with fix: snapshot table, refcounts (qcow2_check_refcounts), snapshot fix, clean. */
  async runRepair(): Promise<void> {
    const fixErrors = this.mode === 'all';
    this.fixLeaks = true;
    this.fixErrors = fixErrors;
    await this.load();
    await this.readSnapshotTable();
    this.refs = this.newReferenceCounts();
    await this.calculateRefcounts();
    this.refuseUnsafe();
    const preCompare = { ...this.res };
    await this.compareRefcounts(false, false);

    if (this.rebuild && fixErrors) {
      const old = { ...this.res };
      this.message('repair', 'Rebuilding refcount structure');
      await this.rebuildRefcountStructure();
      this.res.corruptions = 0;
      this.res.leaks = 0;
      this.rebuild = false;
      // Count again with the new structures in place, without fixing (qemu's calculate_refcounts with fix 0).
      this.fixLeaks = false;
      this.fixErrors = false;
      await this.load();
      this.refs = this.newReferenceCounts();
      await this.calculateRefcounts();
      const saved = this.res;
      this.res = zeroCounters();
      await this.compareRefcounts(true, false);
      if (this.rebuild) this.message('repair', 'ERROR rebuilt refcount structure is still broken');
      const freshLeaks = this.res.leaks;
      this.res = saved;
      if (this.res.corruptions < old.corruptions) this.res.corruptionsFixed += old.corruptions - this.res.corruptions;
      if (this.res.leaks < old.leaks) this.res.leaksFixed += old.leaks - this.res.leaks;
      this.res.leaks += freshLeaks;
      this.fixLeaks = true;
      this.fixErrors = fixErrors;
    } else {
      if (this.rebuild) {
        this.message('repair', 'ERROR need to rebuild refcount structures');
        this.res.checkErrors++;
        throw new CheckAbort('Input/output error');
      }
      if (this.res.leaks !== 0 || this.res.corruptions !== 0) {
        this.res = preCompare;
        await this.compareRefcounts(true, fixErrors);
      }
    }
    await this.checkOflagCopied();
    await this.storage.flush();

    if (this.snapshotCorruptions > 0 && fixErrors) {
      await this.rewriteSnapshotTable();
      this.res.corruptionsFixed += this.snapshotCorruptions;
      this.snapshotCorruptions = 0;
    }
    if (this.res.checkErrors === 0 && this.res.corruptions + this.snapshotCorruptions === 0) await this.markClean();
  }
}

/** A v3 snapshot entry with the 24 bytes of known extra data qemu writes (disk size: the current one if unknown). */
function completeEntry(entry: SnapshotEntry, virtualSize: number): SnapshotEntry {
  if (entry.extraData.length >= 24) return entry;
  const extraData = new Uint8Array(24);
  extraData.set(entry.extraData);
  return {
    ...entry,
    extraData,
    diskSize: entry.diskSize ?? virtualSize,
    // Not stored: icount was not recorded (-1).
    icount: undefined,
  };
}

/**
 * Repairs an image as `qemu-img check -r leaks|all` does, then checks it again when something was fixed. The
 * image's storage must be writable, and no writer may be attached (a repair works below it: this is how an image
 * left dirty by a crash under lazy refcounts is made writable again). Afterwards the image object's cached header,
 * active L1 and L2 tables are refreshed from the file.
 */
export async function repairImage(image: Qcow2Image, mode: RepairMode, options: CheckOptions = {}): Promise<RepairReport> {
  let report: RepairReport;
  try {
    report = await repairStorage(image.storage, mode, options);
  } catch (error) {
    await refreshImage(image).catch(() => undefined);
    throw error;
  }
  await refreshImage(image);
  return report;
}

/**
 * The same repair on a qcow2 file given as (writable) storage, for images Qcow2Image.open refuses but qemu-img
 * check still examines (see checkStorage).
 */
export async function repairStorage(storage: Storage, mode: RepairMode, options: CheckOptions = {}): Promise<RepairReport> {
  if (mode !== 'leaks' && mode !== 'all') {
    throw new Qcow2Error('BAD_ARGUMENT', `Unknown option value for -r (expecting 'leaks' or 'all'): ${String(mode)}`);
  }
  const repairer = new ImageRepairer(storage, storage.name, mode, options);
  const repair = await runChecker(repairer, () => repairer.runRepair());
  let recheck: CheckReport | undefined;
  if (repair.failure === undefined && (repair.leaksFixed > 0 || repair.corruptionsFixed > 0)) {
    const checker = new ImageChecker(storage, storage.name, options);
    recheck = await runChecker(checker, () => checker.run());
  }
  return { repair, recheck };
}

/** Brings the image object's cached metadata in line with the repaired file. */
async function refreshImage(image: Qcow2Image): Promise<void> {
  const checker = new ImageChecker(image.storage, image.name);
  await checker.load();
  Object.assign(image.header, checker.header);
  image.fileSize = checker.fileSize;
  const l1 = new Uint8Array(checker.header.l1Size * 8);
  await readZeroPadded(image.storage, l1, checker.header.l1TableOffset);
  image.replaceActiveL1(l1);
  image.l2Cache.clear();
  image.invalidateCompressedCache();
}
