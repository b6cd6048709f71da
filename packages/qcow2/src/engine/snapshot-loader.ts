import { Qcow2Error } from '../errors.js';
import { MAX_SNAPSHOT_TABLE_BYTES } from '../format/constants.js';
import { decodeSnapshotEntry, type SnapshotEntry } from '../format/snapshot-table.js';
import type { Storage } from '../io/storage.js';

/**
 * Reads `count` snapshot entries at `offset`. The table's length is not stored, so it is read in growing
 * chunks, never past qemu's 64 MiB limit nor past the end of the file.
 */
export async function loadSnapshotTable(storage: Storage, offset: number, count: number, fileSize: number): Promise<{ entries: SnapshotEntry[]; tableBytes: number }> {
  try {
    return await readSnapshotTable(storage, offset, count, fileSize);
  } catch (error) {
    throw error instanceof Qcow2Error ? error.inStructure('snapshot-table') : error;
  }
}

async function readSnapshotTable(storage: Storage, offset: number, count: number, fileSize: number): Promise<{ entries: SnapshotEntry[]; tableBytes: number }> {
  const entries: SnapshotEntry[] = [];
  if (count === 0) return { entries, tableBytes: 0 };
  const limit = Math.min(MAX_SNAPSHOT_TABLE_BYTES, fileSize - offset);
  let buffer = new Uint8Array(0);
  let position = 0;
  const ensure = async (needed: number): Promise<void> => {
    if (needed > limit) {
      throw new Qcow2Error(
        needed > MAX_SNAPSHOT_TABLE_BYTES ? 'BAD_SNAPSHOT_TABLE' : 'TRUNCATED',
        needed > MAX_SNAPSHOT_TABLE_BYTES ? 'snapshot table is larger than 64 MiB' : 'snapshot table lies past the end of the file',
      );
    }
    const size = Math.min(limit, Math.max(needed, buffer.length * 2, 4096));
    const grown = new Uint8Array(size);
    grown.set(buffer);
    const got = await storage.read(grown.subarray(buffer.length), offset + buffer.length);
    buffer = grown.subarray(0, buffer.length + got);
  };
  while (entries.length < count) {
    const result = decodeSnapshotEntry(buffer, position);
    if ('needed' in result) {
      await ensure(result.needed);
      if (buffer.length < result.needed) throw new Qcow2Error('TRUNCATED', 'snapshot table lies past the end of the file');
      continue;
    }
    entries.push(result.entry);
    position = result.next;
  }
  return { entries, tableBytes: position };
}
