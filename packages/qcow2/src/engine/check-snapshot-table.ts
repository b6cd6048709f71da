import { MAX_SNAPSHOTS, MAX_SNAPSHOT_EXTRA_DATA, MAX_SNAPSHOT_TABLE_BYTES } from '../format/constants.js';
import { SNAPSHOT_ENTRY_FIXED_BYTES, V3_MIN_SNAPSHOT_EXTRA_DATA_BYTES, decodeSnapshotEntryFixed, snapshotEntryParts } from '../format/snapshot-table.js';
import { readZeroPadded, type Storage } from '../io/storage.js';
import type { CheckPass } from './check-pass.js';
import { CheckAbort } from './check-report.js';

const textDecoder = new TextDecoder();

/**
 * qemu's qcow2_check_read_snapshot_table: the snapshot table as check reads it, through the table's own codec
 * (format/snapshot-table.ts) but tolerant where Qcow2Image.open refuses: offsets are read as stored (even above
 * 2^53: what follows from them is reported), bytes past the end of the file read as zeros, and qemu's limits
 * stop the check with qemu's words. Version 3 entries with less than the 16 bytes of extra data v3 requires are
 * counted apart (a repair rewrites the table).
 */
export async function readSnapshotTable(pass: CheckPass): Promise<void> {
  const { nbSnapshots, snapshotsOffset } = pass.header;
  pass.snapshots = [];
  pass.snapshotTableSize = 0;
  if (nbSnapshots > MAX_SNAPSHOTS || snapshotsOffset % pass.clusterSize !== 0) {
    // Qcow2Image.open refuses these; a caller that checks a raw storage gets qemu's error.
    pass.res.checkErrors++;
    pass.message('snapshot', nbSnapshots > MAX_SNAPSHOTS ? 'ERROR snapshot table too large' : 'ERROR snapshot table offset invalid');
    throw new CheckAbort(nbSnapshots > MAX_SNAPSHOTS ? 'File too large' : 'Invalid argument');
  }
  if (nbSnapshots === 0) return;
  const reader = new SequentialReader(pass.storage, snapshotsOffset);
  let position = 0;
  for (let i = 0; i < nbSnapshots; i++) {
    position = (position + 7) & ~7;
    const fixed = decodeSnapshotEntryFixed(await reader.read(position, SNAPSHOT_ENTRY_FIXED_BYTES), { exact: false });
    if (fixed.extraDataSize > MAX_SNAPSHOT_EXTRA_DATA) {
      pass.res.checkErrors++;
      pass.message('snapshot', `ERROR failed to read the snapshot table: Too much extra metadata in snapshot table entry ${i}`);
      throw new CheckAbort('File too large');
    }
    const parts = snapshotEntryParts(fixed, position);
    const id = textDecoder.decode(await reader.read(parts.idStart, fixed.idSize));
    const name = textDecoder.decode(await reader.read(parts.nameStart, fixed.nameSize));
    position = parts.end;
    if (position > MAX_SNAPSHOT_TABLE_BYTES) {
      pass.res.checkErrors++;
      pass.message('snapshot', 'ERROR failed to read the snapshot table: Snapshot table is too big');
      throw new CheckAbort('File too large');
    }
    pass.snapshots.push({ l1TableOffset: fixed.l1TableOffset, l1Size: fixed.l1Size, id, name, extraDataSize: fixed.extraDataSize });
  }
  pass.snapshotTableSize = position;
  if (pass.header.version >= 3) {
    pass.snapshots.forEach((snapshot, i) => {
      if (snapshot.extraDataSize < V3_MIN_SNAPSHOT_EXTRA_DATA_BYTES) {
        pass.snapshotCorruptions++;
        pass.message('snapshot', `${pass.fixErrors ? 'Repairing' : 'ERROR'} snapshot table entry ${i} is incomplete`);
      }
    });
  }
}

/** Reads a region sequentially through a window, zeros past the end of the file. */
class SequentialReader {
  private window = new Uint8Array(0);
  private windowStart = 0;

  constructor(
    private readonly storage: Storage,
    private readonly base: number,
  ) {}

  async read(position: number, length: number): Promise<Uint8Array> {
    if (position < this.windowStart || position + length > this.windowStart + this.window.length) {
      const size = Math.max(length, 64 * 1024);
      this.window = new Uint8Array(size);
      this.windowStart = position;
      await readZeroPadded(this.storage, this.window, this.base + position);
    }
    return this.window.subarray(position - this.windowStart, position - this.windowStart + length);
  }
}
