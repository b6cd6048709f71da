import { Qcow2Error } from '../errors.js';
import { HeaderExtensionType, MAX_BACKING_FILE_NAME, V2_HEADER_LENGTH } from '../format/constants.js';
import { encodeHeaderExtensions, encodeStringExtension, type HeaderExtension } from '../format/header-extensions.js';
import { decodeHeader } from '../format/header.js';
import { viewOf, writeU64 } from '../format/struct.js';
import type { Qcow2Image } from './qcow2-image.js';

/** What an image's header says about its backing file: the name exactly as stored, and the format extension. */
export interface BackingReference {
  /** The name as it will be stored (relative names resolve against the image's directory when opened). */
  file: string;
  /** The backing format extension ('raw', 'qcow2', …); without it the header records none. */
  format?: string;
}

const textEncoder = new TextEncoder();
const SECTOR = 512;

/**
 * Rewrites the backing file reference of `image` (qemu's bdrv_change_backing_file): the backing file name and
 * the backing format header extension change, everything else in cluster 0 stays byte for byte — the header
 * fields up to header_length (unknown and padding bytes included), and every other extension, known or not, in
 * its order. `undefined` (or an empty name) removes the reference and the format extension with it.
 *
 * The new cluster-0 prefix is written with one write, starting at offset 0, covering the old and the new header
 * (rounded up to a sector), so a process killed at any point leaves either the old or the new reference. With
 * `durable` (the default) the write is flushed to stable storage before this returns.
 *
 * The header is re-read from the file first, so fields other writers changed on disk are kept. Callers flush
 * their own pending metadata before. Refused (BAD_ARGUMENT, nothing written) when the name is longer than qemu
 * allows (1023 bytes) or when header, extensions and name do not fit in cluster 0.
 */
export async function setBackingReference(image: Qcow2Image, backing: BackingReference | undefined, options: { durable?: boolean } = {}): Promise<void> {
  const clusterSize = image.clusterSize;
  const file = backing === undefined || backing.file === '' ? undefined : backing.file;
  const nameBytes = file === undefined ? new Uint8Array(0) : textEncoder.encode(file);
  if (nameBytes.length > MAX_BACKING_FILE_NAME) {
    throw new Qcow2Error('BAD_ARGUMENT', `backing file name too long (${nameBytes.length} bytes, at most ${MAX_BACKING_FILE_NAME})`, { file: image.name });
  }

  const cluster0 = new Uint8Array(Math.min(clusterSize, image.fileSize));
  await image.storage.read(cluster0, 0);
  const header = decodeHeader(cluster0);
  const headerLength = header.version === 2 ? V2_HEADER_LENGTH : header.headerLength;

  const extensions = replaceBackingFormat(header.extensions, file === undefined ? undefined : backing?.format);
  const extensionBytes = encodeHeaderExtensions(extensions);
  const nameOffset = headerLength + extensionBytes.length;
  const newEnd = nameOffset + nameBytes.length;
  if (newEnd > clusterSize) {
    throw new Qcow2Error(
      'BAD_ARGUMENT',
      `Could not change the backing file to '${file ?? ''}': header, extensions and backing file name (${newEnd} bytes) do not fit in the first cluster (${clusterSize} bytes)`,
      { file: image.name },
    );
  }
  // Everything the old header used, so no stale bytes of an old, longer name or extension list stay behind.
  const oldEnd = Math.max(headerEnd(cluster0, header.extensions, headerLength), header.backingFileOffset + header.backingFileSize);
  const writeLength = Math.min(clusterSize, Math.ceil(Math.max(newEnd, oldEnd) / SECTOR) * SECTOR);

  const out = new Uint8Array(writeLength);
  out.set(cluster0.subarray(0, headerLength));
  const view = viewOf(out);
  writeU64(view, 8, nameBytes.length === 0 ? 0 : nameOffset);
  view.setUint32(16, nameBytes.length);
  out.set(extensionBytes, headerLength);
  out.set(nameBytes, nameOffset);
  await image.storage.write(out, 0);
  if (options.durable ?? true) await image.storage.flush();
  image.fileReaches(out.length);

  // The in-memory header follows what is now on disk.
  image.header.backingFile = file;
  image.header.backingFileOffset = nameBytes.length === 0 ? 0 : nameOffset;
  image.header.backingFileSize = nameBytes.length;
  image.header.extensions = extensions;
}

/** The extension list with the backing format extension replaced in place, added first (as qemu orders it), or removed. */
function replaceBackingFormat(extensions: HeaderExtension[], format: string | undefined): HeaderExtension[] {
  const replacement = format === undefined || format === '' ? undefined : encodeStringExtension(HeaderExtensionType.BackingFormat, format);
  const out: HeaderExtension[] = [];
  let placed = false;
  for (const extension of extensions) {
    if (extension.type !== HeaderExtensionType.BackingFormat) {
      out.push(extension);
    } else if (replacement !== undefined && !placed) {
      out.push(replacement);
      placed = true;
    }
  }
  if (replacement !== undefined && !placed) out.unshift(replacement);
  return out;
}

/** Where the stored extension list ends (its end marker included). */
function headerEnd(cluster0: Uint8Array, extensions: HeaderExtension[], headerLength: number): number {
  let end = headerLength;
  for (const extension of extensions) end += 8 + ((extension.data.length + 7) & ~7);
  return Math.min(cluster0.length, end + 8);
}
