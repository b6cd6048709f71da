import { Qcow2Error } from '../errors.js';
import { HeaderExtensionType } from './constants.js';
import { readU64, viewOf, writeU64 } from './struct.js';

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

/** The bitmaps header extension: where the bitmap directory is and how many bitmaps it holds. */
export interface BitmapsExtension {
  nbBitmaps: number;
  bitmapDirectorySize: number;
  bitmapDirectoryOffset: number;
}

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
  for (let offset = 0; offset + 48 <= ext.data.length; offset += 48) {
    const raw = ext.data.subarray(offset + 2, offset + 48);
    const nul = raw.indexOf(0);
    names.push({ type: ext.data[offset]!, bit: ext.data[offset + 1]!, name: textDecoder.decode(nul === -1 ? raw : raw.subarray(0, nul)) });
  }
  return names;
}

/** The decoded bitmaps extension, if the header has one. */
export function bitmapsExtensionOf(extensions: HeaderExtension[]): BitmapsExtension | undefined {
  const ext = findExtension(extensions, HeaderExtensionType.Bitmaps);
  if (ext === undefined) return undefined;
  if (ext.data.length < 24) throw new Qcow2Error('BAD_EXTENSION', `bitmaps extension too short (${ext.data.length} bytes)`);
  const view = viewOf(ext.data);
  return {
    nbBitmaps: view.getUint32(0),
    bitmapDirectorySize: readU64(view, 8, 'bitmap directory size'),
    bitmapDirectoryOffset: readU64(view, 16, 'bitmap directory offset'),
  };
}

/** A header extension holding a string (backing format, data file name). */
export function encodeStringExtension(type: number, value: string): HeaderExtension {
  return { type, data: new TextEncoder().encode(value) };
}

/** Encodes a bitmaps extension. */
export function encodeBitmapsExtension(value: BitmapsExtension): HeaderExtension {
  const data = new Uint8Array(24);
  const view = viewOf(data);
  view.setUint32(0, value.nbBitmaps);
  writeU64(view, 8, value.bitmapDirectorySize);
  writeU64(view, 16, value.bitmapDirectoryOffset);
  return { type: HeaderExtensionType.Bitmaps, data };
}
