import { Qcow2Error } from '../errors.js';
import { AutoclearFeature, CompatibleFeature, HeaderExtensionType, IncompatibleFeature } from './constants.js';
import { decodeStruct, encodeStruct, structSize, viewOf, type StructSpec } from './struct.js';

/** One header extension as stored: kept whole so unknown ones survive a header rewrite. */
export interface HeaderExtension {
  type: number;
  data: Uint8Array;
}

/** One entry of the feature name table extension: a feature bit and its name. */
export interface FeatureName {
  /** 0 incompatible, 1 compatible, 2 autoclear. */
  type: number;
  bit: number;
  name: string;
}

/** Bytes of one feature name table entry: type u8, bit u8, name padded with NULs to 46 bytes. */
const FEATURE_NAME_ENTRY_BYTES = 48;

/** The feature name table qemu writes into every v3 image (qemu 7.2), so tools can name bits they do not know. */
export const QEMU_FEATURE_NAMES: readonly FeatureName[] = [
  { type: 0, bit: IncompatibleFeature.Dirty, name: 'dirty bit' },
  { type: 0, bit: IncompatibleFeature.Corrupt, name: 'corrupt bit' },
  { type: 0, bit: IncompatibleFeature.ExternalDataFile, name: 'external data file' },
  { type: 0, bit: IncompatibleFeature.CompressionType, name: 'compression type' },
  { type: 0, bit: IncompatibleFeature.ExtendedL2, name: 'extended L2 entries' },
  { type: 1, bit: CompatibleFeature.LazyRefcounts, name: 'lazy refcounts' },
  { type: 2, bit: AutoclearFeature.Bitmaps, name: 'bitmaps' },
  { type: 2, bit: AutoclearFeature.DataFileRaw, name: 'raw external data' },
];

/** The bitmaps header extension: where the bitmap directory is and how many bitmaps it holds. */
export interface BitmapsExtension {
  nbBitmaps: number;
  bitmapDirectorySize: number;
  bitmapDirectoryOffset: number;
}

/** The bitmaps header extension with every field, the reserved word included. */
export interface BitmapsExtensionFields extends BitmapsExtension {
  reserved: number;
}

/** The bitmaps extension's data: nb_bitmaps, a reserved word, the directory's size and offset. */
const bitmapsExtensionLayout = {
  nbBitmaps: { type: 'u32', offset: 0 },
  reserved: { type: 'u32', offset: 4 },
  bitmapDirectorySize: { type: 'u64', offset: 8 },
  bitmapDirectoryOffset: { type: 'u64', offset: 16 },
} as const satisfies StructSpec<string>;

/** Bytes of the bitmaps extension's data. */
export const BITMAPS_EXTENSION_BYTES = structSize(bitmapsExtensionLayout);

const textDecoder = new TextDecoder();

/**
 * Decodes the extension list that starts at `start` in cluster 0. `region` ends where the extensions must end:
 * the backing file name, when there is one, follows them (qemu reads up to it).
 */
export function decodeHeaderExtensions(cluster0: Uint8Array, start: number, end = cluster0.length): HeaderExtension[] {
  const extensions: HeaderExtension[] = [];
  const view = viewOf(cluster0);
  let offset = start;
  while (offset + 8 <= end) {
    const type = view.getUint32(offset);
    const length = view.getUint32(offset + 4);
    offset += 8;
    // Before the end marker's type is looked at, as qemu does: a header_length that lands the list on other
    // bytes is refused, not read as an empty list.
    if (length > end - offset) {
      throw new Qcow2Error('BAD_EXTENSION', `header extension 0x${type.toString(16)} is too large (${length} bytes)`);
    }
    if (type === HeaderExtensionType.End) return extensions;
    extensions.push({ type, data: cluster0.slice(offset, offset + length) });
    offset += (length + 7) & ~7;
  }
  return extensions;
}

/** Encodes header extensions (each padded to 8 bytes) followed by the end marker. */
export function encodeHeaderExtensions(extensions: HeaderExtension[]): Uint8Array {
  let total = 8; // end marker
  for (const ext of extensions) total += 8 + ((ext.data.length + 7) & ~7);
  const out = new Uint8Array(total);
  const view = viewOf(out);
  let offset = 0;
  for (const ext of extensions) {
    view.setUint32(offset, ext.type);
    view.setUint32(offset + 4, ext.data.length);
    out.set(ext.data, offset + 8);
    offset += 8 + ((ext.data.length + 7) & ~7);
  }
  return out; // the trailing 8 zero bytes are the end marker
}

/** The first header extension of a type, if any. */
export function findExtension(extensions: HeaderExtension[], type: number): HeaderExtension | undefined {
  return extensions.find((e) => e.type === type);
}

function extensionString(extensions: HeaderExtension[], type: number): string | undefined {
  const ext = findExtension(extensions, type);
  if (ext === undefined) return undefined;
  // qemu stores these names without a terminating NUL; tolerate one.
  const nul = ext.data.indexOf(0);
  return textDecoder.decode(nul === -1 ? ext.data : ext.data.subarray(0, nul));
}

/** The backing format named by the header extensions, if any. */
export function backingFormatOf(extensions: HeaderExtension[]): string | undefined {
  return extensionString(extensions, HeaderExtensionType.BackingFormat);
}

/** The external data file name stored in the header extensions, if any. */
export function dataFileNameOf(extensions: HeaderExtension[]): string | undefined {
  return extensionString(extensions, HeaderExtensionType.ExternalDataFile);
}

/** The feature name table stored in the header extensions. */
export function featureNamesOf(extensions: HeaderExtension[]): FeatureName[] {
  const ext = findExtension(extensions, HeaderExtensionType.FeatureNameTable);
  if (ext === undefined) return [];
  const names: FeatureName[] = [];
  for (let offset = 0; offset + FEATURE_NAME_ENTRY_BYTES <= ext.data.length; offset += FEATURE_NAME_ENTRY_BYTES) {
    const raw = ext.data.subarray(offset + 2, offset + FEATURE_NAME_ENTRY_BYTES);
    const nul = raw.indexOf(0);
    names.push({ type: ext.data[offset]!, bit: ext.data[offset + 1]!, name: textDecoder.decode(nul === -1 ? raw : raw.subarray(0, nul)) });
  }
  return names;
}

/** Encodes a feature name table extension. */
export function encodeFeatureNameTable(names: readonly FeatureName[]): HeaderExtension {
  const data = new Uint8Array(names.length * FEATURE_NAME_ENTRY_BYTES);
  const encoder = new TextEncoder();
  names.forEach(({ type, bit, name }, i) => {
    data[i * FEATURE_NAME_ENTRY_BYTES] = type;
    data[i * FEATURE_NAME_ENTRY_BYTES + 1] = bit;
    data.set(encoder.encode(name), i * FEATURE_NAME_ENTRY_BYTES + 2);
  });
  return { type: HeaderExtensionType.FeatureNameTable, data };
}

/** Decodes the fields of a bitmaps extension's data from its first 24 bytes (qemu's open wants exactly 24). */
export function decodeBitmapsExtensionFields(data: Uint8Array): BitmapsExtensionFields {
  if (data.length < BITMAPS_EXTENSION_BYTES) throw new Qcow2Error('BAD_EXTENSION', `bitmaps extension too short (${data.length} bytes)`);
  return decodeStruct(bitmapsExtensionLayout, data, 'bitmaps extension');
}

/** The decoded bitmaps extension, if the header has one. */
export function bitmapsExtensionOf(extensions: HeaderExtension[]): BitmapsExtension | undefined {
  const ext = findExtension(extensions, HeaderExtensionType.Bitmaps);
  if (ext === undefined) return undefined;
  const { nbBitmaps, bitmapDirectorySize, bitmapDirectoryOffset } = decodeBitmapsExtensionFields(ext.data);
  return { nbBitmaps, bitmapDirectorySize, bitmapDirectoryOffset };
}

/** A header extension holding a string (backing format, data file name). */
export function encodeStringExtension(type: number, value: string): HeaderExtension {
  return { type, data: new TextEncoder().encode(value) };
}

/** Encodes a bitmaps extension. */
export function encodeBitmapsExtension(value: BitmapsExtension): HeaderExtension {
  const data = new Uint8Array(BITMAPS_EXTENSION_BYTES);
  encodeStruct(bitmapsExtensionLayout, { ...value, reserved: 0 }, data);
  return { type: HeaderExtensionType.Bitmaps, data };
}
