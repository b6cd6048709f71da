/**
 * Reference resolution, as plain string work so it runs in browsers too. A relative backing (or data file)
 * name is combined with the directory part of the name of the image that holds it, the way qemu's
 * path_combine does: "dir/top.qcow2" + "base.raw" = "dir/base.raw"; an absolute name stays as it is.
 */
export function isAbsolutePath(name: string): boolean {
  return name.startsWith('/');
}

/** Resolves `reference` (a backing or data file name) against the image named `imageName`, as qemu does. */
export function combinePath(imageName: string, reference: string): string {
  if (isAbsolutePath(reference) || reference.includes('://')) return reference;
  const slash = imageName.lastIndexOf('/');
  return slash === -1 ? reference : imageName.slice(0, slash + 1) + reference;
}
