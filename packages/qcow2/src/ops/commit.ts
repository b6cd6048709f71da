/**
 * commit: writes what the layers above a base image hold into that base (qemu-img commit), then empties the
 * top image so it reads through to the base again.
 *
 * Surviving a crash. The work is ordered so that the chain a guest reads through the top image shows the same
 * contents at every moment, whatever point the process is killed at:
 *   1. Copy into the base. Only ranges that a layer above the base answers for are written, with exactly the
 *      contents the top image shows there; the top image itself is not touched. A crash here leaves the top
 *      image's view unchanged (it still holds, or reaches through the intermediate layers, every byte that was
 *      being copied) and the base a valid image holding a mix of old and committed data — which is also what
 *      qemu leaves, and why images between the top and the base are invalid after a commit either way.
 *   2. Flush the base to stable storage.
 *   3. Only then empty the top image (unless -d, and never with -b, which implies -d as in qemu-img): its L1
 *      table is cleared in one write, then the refcounts drop (see engine/make-empty.ts). A crash in between
 *      leaves both images consistent with the data in both; a cleared L1 entry reads through to the base, which
 *      holds the same bytes since step 2. Only leaked clusters can remain, which `check -r leaks` reclaims.
 *
 * What is copied: the extents of the top image's chain whose depth is above the base's depth. Data extents are
 * read through the top device (decompressing as needed) and written; zero extents become zero writes in the
 * base (zero flags in a qcow2 base); ranges that read as zeros because an intermediate layer is shorter than the
 * top are zeroed too (qemu counts them as allocated there). Nothing else is read: committing a mostly empty
 * overlay of a huge disk costs what the overlay holds.
 */
import { isWritable, type BlockDevice, type ImageFormat, type WritableBlockDevice } from '../device/block-device.js';
import type { HostFiles, ReferenceGate } from '../device/host-files.js';
import { layerPermissions } from '../device/image-permissions.js';
import { openImage } from '../device/open-image.js';
import { combinePath } from '../device/paths.js';
import { Qcow2Device } from '../device/qcow2-device.js';
import type { CompressionCodecs } from '../engine/compression.js';
import { makeEmpty } from '../engine/make-empty.js';
import { Qcow2Image } from '../engine/qcow2-image.js';
import { Qcow2Error } from '../errors.js';
import { WRITE_CHUNK } from '../io/write-size.js';
import type { Storage } from '../io/storage.js';
import { walkExtents } from './extent-walk.js';

/** Options of commitImage (qemu-img commit). */
export interface CommitOptions {
  hostFiles: HostFiles;
  /** The top image's format (qemu-img commit -f); probed when absent. */
  format?: ImageFormat;
  /**
   * The image to commit into (qemu-img commit -b): a name found in the top image's backing chain, relative to
   * the directory of the image that names it, or absolute. Default: the top image's immediate backing file.
   * Implies `drop`, as in qemu-img: the images in between become invalid, so the top image must keep its data.
   */
  base?: string;
  /** Keep the top image's data (qemu-img commit -d). */
  drop?: boolean;
  /** Offered every backing and data file reference of the chain before it is opened. */
  gate?: ReferenceGate;
  codecs?: CompressionCodecs;
  onProgress?: (done: number, total: number) => void;
}

/** What a commit wrote, and into which image. */
export interface CommitResult {
  /** The image committed into, by the name its overlay resolves it to. */
  base: string;
  /** Its depth in the top image's chain (1 = the immediate backing file). */
  baseDepth: number;
  copiedBytes: number;
  zeroedBytes: number;
  /** Whether the top image was emptied. */
  emptied: boolean;
}

/** One range of the copy plan. */
export interface CommitRange {
  offset: number;
  length: number;
  action: 'copy' | 'zero';
}

const CHUNK = WRITE_CHUNK;

/**
 * The ranges that committing `top` into the layer at `baseDepth` of its chain must write: what the layers above
 * the base answer for, merged. Metadata only.
 */
export async function commitPlan(top: BlockDevice, baseDepth: number): Promise<CommitRange[]> {
  const plan: CommitRange[] = [];
  for await (const extent of walkExtents(top)) {
    if (extent.depth >= baseDepth) continue;
    let action: CommitRange['action'] | undefined;
    if (extent.kind === 'data') action = 'copy';
    else if (extent.kind === 'zero') action = 'zero';
    // Zeros because layer `depth`'s backing file ends early. Past the base's own end there is nothing to do:
    // the base grows to the top's size first and reads zeros there.
    else if (extent.depth < baseDepth - 1) action = 'zero';
    if (action === undefined) continue;
    const last = plan[plan.length - 1];
    if (last !== undefined && last.action === action && last.offset + last.length === extent.offset) last.length += extent.length;
    else plan.push({ offset: extent.offset, length: extent.length, action });
  }
  return plan;
}

interface Resizable {
  resize(newSize: number): Promise<void>;
}

function isResizable(device: BlockDevice): device is BlockDevice & Resizable {
  return typeof (device as Partial<Resizable>).resize === 'function';
}

/**
 * Step 1 and 2 of a commit, on devices: writes `plan` (from commitPlan) from `top` into `base`, a writable
 * device for the same image as layer `baseDepth` of top's chain, grown to the top's size first when shorter;
 * then flushes the base. Reads are pipelined with writes (the next chunk is read while the last is written).
 */
export async function commitIntoBase(
  top: BlockDevice,
  base: WritableBlockDevice,
  plan: CommitRange[],
  onProgress?: (done: number, total: number) => void,
): Promise<{ copiedBytes: number; zeroedBytes: number }> {
  if (base.size < top.size) {
    if (!isResizable(base)) throw new Qcow2Error('BAD_ARGUMENT', 'the base image is shorter than the top image and cannot be resized', { file: base.filename });
    await base.resize(top.size);
  }
  const total = plan.reduce((sum, range) => sum + range.length, 0);
  const buffers = [new Uint8Array(Math.min(CHUNK, Math.max(total, 1))), new Uint8Array(Math.min(CHUNK, Math.max(total, 1)))];
  let turn = 0;
  let pending: Promise<void> = Promise.resolve();
  let done = 0;
  let copiedBytes = 0;
  let zeroedBytes = 0;
  onProgress?.(0, total);
  for (const range of plan) {
    const end = range.offset + range.length;
    if (range.action === 'zero') {
      await pending;
      await base.writeZeroes(range.offset, range.length);
      zeroedBytes += range.length;
      done += range.length;
      onProgress?.(done, total);
      continue;
    }
    for (let pos = range.offset; pos < end; pos += CHUNK) {
      const chunk = buffers[turn]!.subarray(0, Math.min(CHUNK, end - pos));
      turn ^= 1;
      await top.read(chunk, pos);
      await pending;
      pending = base.write(chunk, pos);
      copiedBytes += chunk.length;
      done += chunk.length;
      onProgress?.(done, total);
    }
  }
  await pending;
  await base.flush();
  return { copiedBytes, zeroedBytes };
}

/**
 * The layers of a device's chain, top first. Layer k is the image at depth k.
 */
export function chainLayers(device: BlockDevice): BlockDevice[] {
  const layers: BlockDevice[] = [];
  for (let layer: BlockDevice | undefined = device; layer !== undefined; layer = layer.backing) layers.push(layer);
  return layers;
}

async function identity(hostFiles: HostFiles, name: string): Promise<string> {
  return (await hostFiles.canonical?.(name)) ?? name;
}

/**
 * The depth of `name` in the chain of `layers`, as qemu's bdrv_find_backing_image finds it: for each layer
 * with a backing file, `name` is resolved against that layer's directory (unless absolute) and compared, as a
 * canonical path, with the backing file the layer resolves to; the name stored in the layer matches as well.
 */
export async function findBackingDepth(layers: BlockDevice[], name: string, hostFiles: HostFiles): Promise<number | undefined> {
  for (let k = 0; k + 1 < layers.length; k++) {
    const layer = layers[k]!;
    const below = layers[k + 1]!;
    const stored = layer instanceof Qcow2Device ? layer.image.backingFile : undefined;
    if (stored === name || below.filename === name) return k + 1;
    const wanted = await identity(hostFiles, combinePath(layer.filename, name));
    if (wanted === (await identity(hostFiles, below.filename))) return k + 1;
  }
  return undefined;
}

/** Stands in for an external data file while emptying, which never touches guest data. */
function unopenedDataFile(name: string): Storage {
  const refuse = (): Promise<never> => Promise.reject(new Qcow2Error('DATA_FILE_NOT_FOUND', 'the external data file is not open while emptying the image', { file: name }));
  return { name, read: refuse, write: refuse, size: refuse, truncate: refuse, flush: async () => {}, close: async () => {} };
}

/** Empties the qcow2 image `filename` (step 3): opened alone, without its chain or data file. */
export async function emptyImageFile(filename: string, hostFiles: HostFiles): Promise<void> {
  const storage = await hostFiles.open(filename, { writable: true });
  let image: Qcow2Image | undefined;
  try {
    await storage.setPermissions?.(layerPermissions('qcow2', 'top', { write: true }));
    image = await Qcow2Image.open(storage, { openDataFile: async (name) => unopenedDataFile(name ?? filename) });
    await makeEmpty(image);
  } finally {
    if (image !== undefined) await image.close();
    else await storage.close();
  }
}

/**
 * qemu-img commit [-f FMT] [-b BASE] [-d] FILE: opens FILE's chain, finds the base, copies (commitPlan,
 * commitIntoBase), and empties FILE unless told not to. Errors name the file and use qemu's wording.
 */
export async function commitImage(filename: string, options: CommitOptions): Promise<CommitResult> {
  const open = { hostFiles: options.hostFiles, ...(options.gate === undefined ? {} : { gate: options.gate }), ...(options.codecs === undefined ? {} : { codecs: options.codecs }) };
  // Like qemu-img, the top image is held for writing from the start (it is emptied last), the base is taken for
  // writing when its turn comes, and every image between stays locked for reading.
  const top = await openImage(filename, { ...open, ...(options.format === undefined ? {} : { format: options.format }), lockWrite: true });
  const drop = options.drop === true || options.base !== undefined;
  let result: CommitResult;
  try {
    const layers = chainLayers(top);
    if (layers.length < 2) throw new Qcow2Error('BAD_ARGUMENT', 'Image does not have a backing file', { file: filename });
    let baseDepth = 1;
    if (options.base !== undefined) {
      const found = await findBackingDepth(layers, options.base, options.hostFiles);
      if (found === undefined) throw new Qcow2Error('BAD_ARGUMENT', `Did not find '${options.base}' in the backing chain of '${filename}'`, { file: filename });
      baseDepth = found;
    }
    const baseLayer = layers[baseDepth]!;
    if (!drop) {
      // The top image must be writable for step 3: find out now, before the base changes.
      const probe = await options.hostFiles.open(filename, { writable: true });
      await probe.close();
    }
    const plan = await commitPlan(top, baseDepth);
    const base = await openImage(baseLayer.filename, { ...open, format: baseLayer.format, writable: true, resize: true, cache: 'writeback' });
    try {
      if (!isWritable(base)) throw new Qcow2Error('READ_ONLY', 'base image could not be opened for writing', { file: baseLayer.filename });
      const { copiedBytes, zeroedBytes } = await commitIntoBase(top, base, plan, options.onProgress);
      result = { base: baseLayer.filename, baseDepth, copiedBytes, zeroedBytes, emptied: false };
    } finally {
      await base.close();
    }
  } finally {
    await top.close();
  }
  if (!drop && top instanceof Qcow2Device) {
    await emptyImageFile(top.filename, options.hostFiles);
    result.emptied = true;
  }
  return result;
}
