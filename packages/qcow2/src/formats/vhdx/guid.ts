/**
 * VHDX names its regions and metadata items with Microsoft GUIDs: 16 bytes laid out as {u32 data1, u16 data2,
 * u16 data3} little-endian, then data4's 8 bytes as they are. Written here in the usual text form.
 */
export type Guid = Uint8Array;

/** "2DC27766-F623-4200-9D64-115E9BFD4A08" as its 16 bytes on disk. */
export function guid(text: string): Guid {
  const hex = text.replace(/-/g, '');
  if (!/^[0-9a-fA-F]{32}$/.test(hex)) throw new Error(`not a GUID: ${text}`);
  const bytes = new Uint8Array(16);
  const put = (at: number, from: number, length: number, littleEndian: boolean): void => {
    for (let i = 0; i < length; i++) {
      const source = littleEndian ? from + (length - 1 - i) * 2 : from + i * 2;
      bytes[at + i] = parseInt(hex.slice(source, source + 2), 16);
    }
  };
  put(0, 0, 4, true);
  put(4, 8, 2, true);
  put(6, 12, 2, true);
  put(8, 16, 8, false);
  return bytes;
}

export function guidEquals(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length < 16 || b.length < 16) return false;
  for (let i = 0; i < 16; i++) if (a[i] !== b[i]) return false;
  return true;
}

export function isZeroGuid(g: Uint8Array): boolean {
  return g.subarray(0, 16).every((b) => b === 0);
}

/** A random (version 4) GUID. */
export function randomGuid(): Guid {
  const bytes = globalThis.crypto.getRandomValues(new Uint8Array(16));
  // data3's high nibble holds the version (data3 is little-endian: byte 7); data4[0] the variant.
  bytes[7] = (bytes[7]! & 0x0f) | 0x40;
  bytes[8] = (bytes[8]! & 0x3f) | 0x80;
  return bytes;
}

/** Region table entries. */
export const BAT_REGION = guid('2DC27766-F623-4200-9D64-115E9BFD4A08');
export const METADATA_REGION = guid('8B7CA206-4790-4B9A-B8FE-575F050F886E');

/** Metadata items. */
export const FILE_PARAMETERS = guid('CAA16737-FA36-4D43-B3B6-33F0AA44E76B');
export const VIRTUAL_DISK_SIZE = guid('2FA54224-CD1B-4876-B211-5DBED83BF4B8');
export const PAGE_83_DATA = guid('BECA12AB-B2E6-4523-93EF-C309E000C746');
export const LOGICAL_SECTOR_SIZE = guid('8141BF1D-A96F-4709-BA47-F233A8FAAB5F');
export const PHYSICAL_SECTOR_SIZE = guid('CDA348C7-445D-4471-9CC9-E9885251C556');
export const PARENT_LOCATOR = guid('A8D35F2D-B30B-454D-ABF7-D3D84834AB0C');
