import { readFileSync } from 'node:fs';

/** One persistent bitmap as stored: its directory fields and the guest offsets of its set bits. */
export interface DumpedBitmap {
  name: string;
  flags: number;
  granularity: number;
  tableSize: number;
  /** Guest offset of every set bit's first byte, in order. */
  dirty: number[];
}

/**
 * Reads the persistent bitmaps of a qcow2 file straight from the bytes, by the specification (bitmaps header
 * extension, directory, tables, LSB-first data), independently of the engine under test: tests compare what
 * qemu and qcowkit leave on disk after the same operations.
 */
export function dumpBitmaps(path: string): { autoclear: bigint; bitmaps: DumpedBitmap[] } {
  const d = readFileSync(path);
  const clusterSize = 2 ** d.readUInt32BE(20);
  const autoclear = d.readBigUInt64BE(88);
  let p = d.readUInt32BE(100);
  let directory: { count: number; size: number; offset: number } | undefined;
  while (p + 8 <= clusterSize) {
    const type = d.readUInt32BE(p);
    const length = d.readUInt32BE(p + 4);
    if (type === 0) break;
    if (type === 0x23852875) directory = { count: d.readUInt32BE(p + 8), size: Number(d.readBigUInt64BE(p + 16)), offset: Number(d.readBigUInt64BE(p + 24)) };
    p += 8 + ((length + 7) & ~7);
  }
  const bitmaps: DumpedBitmap[] = [];
  if (directory === undefined) return { autoclear, bitmaps };
  let q = directory.offset;
  for (let i = 0; i < directory.count; i++) {
    const tableOffset = Number(d.readBigUInt64BE(q));
    const tableSize = d.readUInt32BE(q + 8);
    const flags = d.readUInt32BE(q + 12);
    const granularity = 2 ** d.readUInt8(q + 17);
    const nameSize = d.readUInt16BE(q + 18);
    const extra = d.readUInt32BE(q + 20);
    const name = d.subarray(q + 24 + extra, q + 24 + extra + nameSize).toString();
    q += (24 + extra + nameSize + 7) & ~7;
    const dirty: number[] = [];
    for (let j = 0; j < tableSize; j++) {
      const entry = d.readBigUInt64BE(tableOffset + 8 * j);
      const offset = Number(entry & 0x00fffffffffffe00n);
      const data = offset !== 0 ? d.subarray(offset, offset + clusterSize) : (entry & 1n) === 1n ? Buffer.alloc(clusterSize, 0xff) : undefined;
      if (data === undefined) continue;
      for (let byte = 0; byte < data.length; byte++) {
        if (data[byte] === 0) continue;
        for (let bit = 0; bit < 8; bit++) if ((data[byte]! >> bit) & 1) dirty.push((j * clusterSize * 8 + byte * 8 + bit) * granularity);
      }
    }
    bitmaps.push({ name, flags, granularity, tableSize, dirty });
  }
  return { autoclear, bitmaps };
}
