import {
  COMPRESSED_HI,
  COPIED_HI,
  ZERO_LO,
  entryHostOffset,
  withCopied,
} from '../format/table-entries.js';
import { readZeroPadded } from '../io/storage.js';
import { UNKNOWN_REFCOUNT, type CheckPass } from './check-pass.js';
import { hex64 } from './check-report.js';
import { firstRefcountMismatch, skipRightCopiedFlags } from './check-scan.js';
import { NOT_CACHED } from './stored-refcounts.js';

/**
 * Comparing the references counted with the refcounts stored (qemu's compare_refcounts: leaks, refcounts too low,
 * unreadable refcounts; with a repair, each fixed through the hooks), then the COPIED flags of the active L1 and
 * its L2 tables against the stored refcounts (check_oflag_copied).
 */

export async function compareRefcounts(pass: CheckPass, fixLeaks: boolean, fixErrors: boolean): Promise<void> {
  pass.highestCluster = 0;
  const size = pass.refs.size;
  const perBlock = pass.stored.entriesPerBlock;
  const copy = pass.layout.refcountBits === 64 ? undefined : new Uint32Array(size);
  const counts = pass.refs.raw;
  // Block by block: one read, a synchronous decode, a tight comparison; a cluster whose counts differ (or that
  // cannot be compared this way) takes compareOne, with qemu's messages and the repairs.
  for (let start = 0; start < size; start += perBlock) {
    const end = Math.min(size, (Math.floor(start / perBlock) + 1) * perBlock);
    const values = copy?.subarray(start, end);
    if (values === undefined || !(await pass.stored.getRange(start, values))) {
      // UNKNOWN_REFCOUNT where a refcount cannot be read: checkOflagCopied asks again there.
      values?.fill(UNKNOWN_REFCOUNT);
      for (let i = start; i < end; i++) await compareOne(pass, i, undefined, fixLeaks, fixErrors, copy);
      continue;
    }
    const highest = { cluster: pass.highestCluster };
    for (let i = firstRefcountMismatch(values, start, counts, start, end, highest); i < end; i = firstRefcountMismatch(values, start, counts, i + 1, end, highest)) {
      pass.highestCluster = highest.cluster;
      await compareOne(pass, i, values[i - start]!, fixLeaks, fixErrors, copy);
      highest.cluster = pass.highestCluster;
    }
    pass.highestCluster = highest.cluster;
  }
  pass.storedCopy = copy;
  await pass.refcountRepairsDone();
}

/** One cluster of compareRefcounts: `stored` as read, or undefined to read it here. */
async function compareOne(pass: CheckPass, i: number, known: number | undefined, fixLeaks: boolean, fixErrors: boolean, copy: Uint32Array | undefined): Promise<void> {
  const stored = known ?? (await pass.stored.get(i));
  if (stored === undefined) {
    pass.message('refcount-unreadable', `Can't get refcount for cluster ${i}: Input/output error`);
    pass.res.checkErrors++;
    return;
  }
  if (copy !== undefined) copy[i] = stored;
  const references = pass.refs.get(i);
  if (stored > 0 || references > 0) pass.highestCluster = i;
  if (stored === references) return;
  let fixed: 'leaks' | 'corruptions' | undefined;
  if (stored === 0) pass.rebuild = true;
  else if (stored > references && fixLeaks) fixed = 'leaks';
  else if (stored < references && fixErrors) fixed = 'corruptions';
  const word = fixed !== undefined ? 'Repairing' : stored < references ? 'ERROR' : 'Leaked';
  pass.message(stored < references ? 'refcount-too-low' : 'leak', `${word} cluster ${i} refcount=${stored} reference=${references}`);
  if (fixed !== undefined && (await pass.repairRefcount(i, references))) {
    if (fixed === 'leaks') pass.res.leaksFixed++;
    else pass.res.corruptionsFixed++;
    if (copy !== undefined) copy[i] = references;
    return;
  }
  if (stored < references) pass.res.corruptions++;
  else pass.res.leaks++;
}

export async function checkOflagCopied(pass: CheckPass): Promise<void> {
  const repair = pass.fixErrors || (pass.fixLeaks && pass.res.checkErrors === 0 && pass.res.corruptions === 0 && pass.res.leaks === 0);
  const { clusterSize, clusterBits, l2Entries, l2EntryBytes, externalDataFile, extendedL2 } = pass.layout;
  const l1Size = pass.header.l1Size;
  const l1 = new Uint8Array(l1Size * 8);
  await readZeroPadded(pass.storage, l1, pass.header.l1TableOffset);
  const l1View = new DataView(l1.buffer);
  for (let i = 0; i < l1Size; i++) {
    const l1Hi = l1View.getUint32(i * 8);
    const l1Lo = l1View.getUint32(i * 8 + 4);
    const l2Offset = entryHostOffset(l1Hi, l1Lo);
    if (l2Offset === 0) continue;
    const l2Refcount = await pass.stored.get(Math.floor(l2Offset / clusterSize));
    if (l2Refcount === undefined) continue;
    const l1Copied = (l1Hi & COPIED_HI) !== 0;
    if ((l2Refcount === 1) !== l1Copied) {
      pass.res.corruptions++;
      pass.message('copied-flag', `${repair ? 'Repairing' : 'ERROR'} OFLAG_COPIED L2 cluster: l1_index=${i} l1_entry=${hex64(l1Hi, l1Lo)} refcount=${l2Refcount}`);
      if (repair) {
        await pass.repairL1Entry(i, withCopied(l1Hi, l2Refcount === 1), l1Lo);
        pass.res.corruptions--;
        pass.res.corruptionsFixed++;
      }
    }
    const table = pass.l2Buffer();
    await readZeroPadded(pass.storage, table, l2Offset);
    const view = new DataView(table.buffer);
    const copy = pass.storedCopy;
    let dirty = 0;
    for (let j = 0; j < l2Entries; j++) {
      // Entries whose flag is right by the refcounts compareRefcounts read are skipped in one synchronous scan.
      if (copy !== undefined && !externalDataFile) {
        j = skipRightCopiedFlags(view, j, l2Entries, l2EntryBytes, clusterBits, copy, UNKNOWN_REFCOUNT);
        if (j >= l2Entries) break;
      }
      const at = j * l2EntryBytes;
      const hi = view.getUint32(at);
      const lo = view.getUint32(at + 4);
      if ((hi & COMPRESSED_HI) !== 0) continue;
      const offset = entryHostOffset(hi, lo);
      const copied = (hi & COPIED_HI) !== 0;
      const cluster = Math.floor(offset / clusterSize);
      const zeroFlag = (lo & ZERO_LO) !== 0 && !extendedL2;
      const isData = zeroFlag ? offset !== 0 : offset !== 0 || (externalDataFile && copied);
      if (!isData) continue;
      let refcount: number | undefined = 1;
      if (!externalDataFile) {
        const known = copy !== undefined && cluster < copy.length ? copy[cluster]! : UNKNOWN_REFCOUNT;
        if (known !== UNKNOWN_REFCOUNT) refcount = known;
        else {
          const peeked = pass.stored.peek(cluster);
          refcount = peeked === NOT_CACHED ? await pass.stored.get(cluster) : peeked;
        }
      }
      if (refcount === undefined) continue;
      if ((refcount === 1) !== copied) {
        pass.res.corruptions++;
        pass.message('copied-flag', `${repair ? 'Repairing' : 'ERROR'} OFLAG_COPIED data cluster: l2_entry=${hex64(hi, lo)} refcount=${refcount}`);
        if (repair) {
          view.setUint32(at, withCopied(hi, refcount === 1));
          dirty++;
        }
      }
    }
    if (dirty > 0) {
      await pass.repairL2Table(l2Offset, table);
      pass.res.corruptions -= dirty;
      pass.res.corruptionsFixed += dirty;
    }
  }
}
