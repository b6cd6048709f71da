/**
 * Names as qemu keeps and reports them: backing file names made absolute the way qemu-img info shows them, and
 * C string semantics (qemu holds names in NUL-terminated buffers). Shared by info and by opening for info.
 */

/** qemu's path_has_protocol: a ':' before any '/'. */
export function hasProtocol(name: string): boolean {
  const stop = name.search(/[:/]/);
  return stop !== -1 && name[stop] === ':';
}

/**
 * The backing file name as qemu-img info reports it in "full-backing-filename" (bdrv_make_absolute_filename):
 * absolute names and names with a protocol prefix ("nbd:…") as they are, anything else appended to the
 * directory part of the image's own name, without any normalisation ("dir/" + "../b" = "dir/../b").
 */
export function fullBackingFilename(imageFilename: string, backingName: string): string {
  if (backingName.startsWith('/') || hasProtocol(backingName)) return backingName;
  const slash = imageFilename.lastIndexOf('/');
  return slash === -1 ? backingName : imageFilename.slice(0, slash + 1) + backingName;
}

/** C string semantics: qemu keeps names in NUL-terminated buffers. */
export function cString(text: string): string {
  const nul = text.indexOf('\0');
  return nul === -1 ? text : text.slice(0, nul);
}
