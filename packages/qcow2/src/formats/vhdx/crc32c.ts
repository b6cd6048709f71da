/**
 * CRC-32C (Castagnoli), as VHDX checksums its headers, region tables and log entries: reflected polynomial
 * 0x82F63B78, initial value and final XOR 0xFFFFFFFF. Table-driven, 8 bytes per step ("slicing by 8"), since log
 * entries can be MiBs.
 */
const TABLES = (() => {
  const tables = Array.from({ length: 8 }, () => new Uint32Array(256));
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0x82f63b78 ^ (c >>> 1) : c >>> 1;
    tables[0]![n] = c >>> 0;
  }
  for (let n = 0; n < 256; n++) {
    for (let t = 1; t < 8; t++) tables[t]![n] = (tables[0]![tables[t - 1]![n]! & 0xff]! ^ (tables[t - 1]![n]! >>> 8)) >>> 0;
  }
  return tables;
})();

/** CRC-32C of `bytes`; `skip` is a 4-byte field (a stored checksum) counted as zeros. */
export function crc32c(bytes: Uint8Array, skip?: number): number {
  const [t0, t1, t2, t3, t4, t5, t6, t7] = TABLES as [Uint32Array, Uint32Array, Uint32Array, Uint32Array, Uint32Array, Uint32Array, Uint32Array, Uint32Array];
  let crc = 0xffffffff;
  const byte = (i: number): number => (skip !== undefined && i >= skip && i < skip + 4 ? 0 : bytes[i]!);
  let i = 0;
  const fastEnd = bytes.length - 8;
  while (i <= fastEnd) {
    if (skip !== undefined && i + 8 > skip && i < skip + 4) {
      crc = t0[(crc ^ byte(i)) & 0xff]! ^ (crc >>> 8);
      i++;
      continue;
    }
    const lo = (crc ^ (bytes[i]! | (bytes[i + 1]! << 8) | (bytes[i + 2]! << 16) | (bytes[i + 3]! << 24))) >>> 0;
    crc =
      t7[lo & 0xff]! ^
      t6[(lo >>> 8) & 0xff]! ^
      t5[(lo >>> 16) & 0xff]! ^
      t4[lo >>> 24]! ^
      t3[bytes[i + 4]!]! ^
      t2[bytes[i + 5]!]! ^
      t1[bytes[i + 6]!]! ^
      t0[bytes[i + 7]!]!;
    i += 8;
  }
  for (; i < bytes.length; i++) crc = t0[(crc ^ byte(i)) & 0xff]! ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}
