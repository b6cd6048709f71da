import { Qcow2Error } from '../errors.js';
import { AutoclearFeature, V2_HEADER_LENGTH } from '../format/constants.js';
import type { HeaderExtension } from '../format/header-extensions.js';
import {
  decodeHeader,
  encodeHeader,
  encodeHeaderFields,
  hasBit,
  headerFieldSpan,
  setBit,
  type HeaderField,
  type Qcow2Header,
} from '../format/header.js';
import type { Storage } from '../io/storage.js';
import type { Qcow2Image } from './qcow2-image.js';

/**
 * Changing the header on disk, the two ways the engine does it: a few fixed fields in place (writeHeaderFields),
 * or the whole of cluster 0 (rewriteHeader). Either is one write, so a kill leaves the old header or the new one.
 */

/** Fixed header fields a writer may change in place (all but the magic). */
export type HeaderFieldChanges = Partial<Pick<Qcow2Header, Exclude<HeaderField, 'magic'>>>;

/**
 * Writes `changes` to the header in place: ONE write of the run of fields that covers every changed one (the
 * fields between keep their values from `header`), then `header` takes the changes. The run lies in the first
 * 112 bytes, inside the first page, so a kill leaves all of it or none. Flushing is the caller's: its ordering
 * rule says what must be durable before and after.
 */
export async function writeHeaderFields(storage: Storage, header: Qcow2Header, changes: HeaderFieldChanges): Promise<void> {
  const { first, last } = headerFieldSpan(Object.keys(changes) as HeaderField[]);
  const { offset, bytes } = encodeHeaderFields({ ...header, ...changes }, first, last);
  await storage.write(bytes, offset);
  Object.assign(header, changes);
}

/**
 * Voids the image's persistent bitmaps for a writer that cannot keep them true: the bitmaps autoclear bit is
 * cleared (and flushed) before the first change, so qemu treats every bitmap as inconsistent. Nothing to do
 * without the bit.
 */
export async function voidPersistentBitmaps(image: Qcow2Image): Promise<void> {
  const header = image.header;
  if (header.version !== 3 || !hasBit(header.autoclearFeatures, AutoclearFeature.Bitmaps)) return;
  await writeHeaderFields(image.storage, header, { autoclearFeatures: setBit(header.autoclearFeatures, AutoclearFeature.Bitmaps, false) });
  await image.storage.flush();
}

const SECTOR = 512;
/** The page cache takes a write inside one page whole: a process killed during it leaves all of it or none. */
const PAGE = 4096;

/**
 * Rewrites cluster 0 (header, extensions, backing file name) from a changed copy of the header on disk, in ONE
 * write from offset 0 that also zeroes whatever the old header used beyond the new one. This is how amend and
 * the bitmap commands switch an image from one state to the next: everything the new header names is written
 * (and flushed) before, everything only the old header named is freed after, so a kill leaves either header.
 * The header is re-read from the file first, so fields written elsewhere since it was opened are kept.
 *
 * Refused when the result does not fit in the cluster, or (for atomicity) spans more than the first page.
 */
export async function rewriteHeader(image: Qcow2Image, change: (header: Qcow2Header) => void, options: { durable?: boolean } = {}): Promise<Qcow2Header> {
  const clusterSize = image.clusterSize;
  const cluster0 = new Uint8Array(Math.min(clusterSize, image.fileSize));
  await image.storage.read(cluster0, 0);
  const header = decodeHeader(cluster0);
  const oldEnd = usedBytes(header, cluster0.length);
  change(header);
  const encoded = encodeHeader(header);
  const length = Math.min(clusterSize, Math.ceil(Math.max(encoded.length, oldEnd) / SECTOR) * SECTOR);
  if (length > PAGE && encoded.length > PAGE) {
    throw new Qcow2Error('BAD_ARGUMENT', 'the header and its extensions would not fit in the first 4 KiB', { file: image.name });
  }
  const out = new Uint8Array(Math.min(length, PAGE));
  out.set(encoded);
  // Bytes of the old header past the first page (a very long old extension list) are zeroed by a second write:
  // the new header, ending inside the first page, no longer reaches them.
  await image.storage.write(out, 0);
  if (length > PAGE) await image.storage.write(new Uint8Array(length - PAGE), PAGE);
  if (options.durable ?? true) await image.storage.flush();
  image.fileReaches(out.length);
  Object.assign(image.header, header);
  return header;
}

/** Bytes the header, its extension list (end marker included) and the backing file name occupy. */
function usedBytes(header: Qcow2Header, available: number): number {
  let end = header.version === 2 ? V2_HEADER_LENGTH : header.headerLength;
  for (const extension of header.extensions) end += 8 + ((extension.data.length + 7) & ~7);
  end += 8;
  return Math.min(available, Math.max(end, header.backingFileOffset + header.backingFileSize));
}

/** The extension list with the extension of `type` replaced (in place), added before the end, or removed. */
export function withExtension(extensions: HeaderExtension[], type: number, replacement: HeaderExtension | undefined): HeaderExtension[] {
  const out: HeaderExtension[] = [];
  let placed = false;
  for (const extension of extensions) {
    if (extension.type !== type) out.push(extension);
    else if (replacement !== undefined && !placed) {
      out.push(replacement);
      placed = true;
    }
  }
  if (replacement !== undefined && !placed) out.push(replacement);
  return out;
}
