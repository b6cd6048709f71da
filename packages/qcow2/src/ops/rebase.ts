/**
 * rebase: changes the backing file of an image (qemu-img rebase).
 *
 * Safe mode keeps what the guest reads: every cluster of the image whose visible contents would change under
 * the new backing chain gets those contents written into the image itself, and only then is the reference
 * switched. Unsafe mode (-u) only rewrites the reference: for backing files that were moved or renamed.
 *
 * Surviving a crash. Safe mode works in this order, so the guest contents read through the image are the same
 * at every moment, whatever point the process is killed at:
 *   1. Copy into the overlay. A cluster is written with exactly the contents it shows now through the OLD chain
 *      (its own data and what shows through from the old backing files), so writing it changes nothing the
 *      guest sees while the old reference is still in place. A crash here leaves a valid image over its old
 *      chain, with some clusters allocated that were not before (at worst leaked clusters, see the writer).
 *   2. Flush the overlay to stable storage.
 *   3. Switch the reference last: the backing file name and backing format extension are rewritten in one
 *      write of cluster 0 (engine/backing-reference.ts), so the header names either the old or the new file.
 *      By then every cluster that differs between the chains is in the overlay, and both chains give the same
 *      guest contents.
 * A failure before step 3 (the new backing file cannot be opened, a read error, ENOSPC) leaves the old
 * reference and an unchanged view.
 *
 * What is compared. Only ranges the overlay does not hold itself (extents of depth > 0, or ranges that read as
 * zeros because the old chain ends early). There, the old chain's and the new chain's extents are walked side
 * by side: ranges both know to read as zeros are skipped without reading, and when the new backing file is one
 * of the old chain's layers (rebasing onto a deeper image), ranges that layer or one below it answers for are
 * skipped too. The rest is read from both chains and compared cluster by cluster (the overlay's clusters).
 */
import { isWritable, type BlockDevice, type ImageFormat, type WritableBlockDevice } from '../device/block-device.js';
import type { HostFiles, ReferenceGate } from '../device/host-files.js';
import { openImage } from '../device/open-image.js';
import { combinePath } from '../device/paths.js';
import { Qcow2Device } from '../device/qcow2-device.js';
import { setBackingReference } from '../engine/backing-reference.js';
import type { CompressionCodecs } from '../engine/compression.js';
import { Qcow2Error } from '../errors.js';
import { WRITE_CHUNK } from '../io/write-size.js';
import { chainLayers } from './commit.js';
import { walkExtents } from './extent-walk.js';
import { isZero } from '../io/zero-detect.js';

/** Options of rebaseImage (qemu-img rebase). */
export interface RebaseOptions {
  hostFiles: HostFiles;
  /** The image's format (qemu-img rebase -f); probed when absent. */
  format?: ImageFormat;
  /** The new backing file name, stored as given (relative names resolve against the image's directory). '' = none. */
  backing: string;
  /** The new backing file's format (-F); required with a backing file, as qemu-img 7.2 requires it. */
  backingFormat?: ImageFormat;
  /** Only rewrite the reference (-u). */
  unsafe?: boolean;
  gate?: ReferenceGate;
  codecs?: CompressionCodecs;
  onProgress?: (done: number, total: number) => void;
  /** qemu-img rebase -U: open the new backing chain without locking others out of it (the old one is locked). */
  forceShare?: boolean;
}

/** How much a rebase compared and copied. */
export interface RebaseResult {
  /** Bytes read from both chains and compared. */
  comparedBytes: number;
  /** Bytes written into the image so its contents stay the same. */
  copiedBytes: number;
}

/** Compared and written in pieces of this size (see io/write-size.ts). */
const CHUNK = WRITE_CHUNK;

interface NativeCompare {
  compare(a: Uint8Array, b: Uint8Array): number;
}
const nativeBuffer = (globalThis as { Buffer?: NativeCompare }).Buffer;

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (nativeBuffer !== undefined && a.length >= 64) return nativeBuffer.compare(a, b) === 0;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Reads guest bytes of `device` (or of nothing), zeros past its end. */
async function readPadded(device: BlockDevice | undefined, dest: Uint8Array, offset: number): Promise<void> {
  const inside = device === undefined ? 0 : Math.max(0, Math.min(dest.length, device.size - offset));
  if (inside > 0) await device!.read(dest.subarray(0, inside), offset);
  if (inside < dest.length) dest.fill(0, inside);
}

/**
 * [offset, offset+length) of `device` split into runs that read as zeros for sure or not, and that a layer at
 * depth `sharedFrom` or deeper answers for (`shared`) or not. Past the device's end: zeros, not shared.
 */
async function* newChainRuns(
  device: BlockDevice | undefined,
  offset: number,
  length: number,
  sharedFrom: number | undefined,
): AsyncGenerator<{ offset: number; length: number; zero: boolean; shared: boolean }> {
  const end = offset + length;
  const inside = device === undefined ? 0 : Math.max(0, Math.min(end, device.size) - offset);
  let pending: { offset: number; length: number; zero: boolean; shared: boolean } | undefined;
  const push = function* (run: { offset: number; length: number; zero: boolean; shared: boolean }) {
    if (pending !== undefined && pending.zero === run.zero && pending.shared === run.shared) {
      pending.length += run.length;
      return;
    }
    if (pending !== undefined) yield pending;
    pending = run;
  };
  if (inside > 0) {
    for await (const extent of walkExtents(device!, offset, inside)) {
      const zero = extent.kind !== 'data' || extent.zeroData === true;
      yield* push({ offset: extent.offset, length: extent.length, zero, shared: sharedFrom !== undefined && extent.depth >= sharedFrom });
    }
  }
  if (inside < length) yield* push({ offset: offset + inside, length: length - inside, zero: true, shared: false });
  if (pending !== undefined) yield pending;
}

/** Options of rebaseOnto. */
export interface RebaseOntoOptions {
  /** The overlay's cluster size: the unit written when any byte of it differs. */
  clusterSize: number;
  /**
   * A file both chains contain (same file, same format): layer `old` of the overlay's current chain (1 = its
   * backing file) is layer `new` of the new backing chain (0 = the new backing file itself). Where both chains
   * answer from that layer or deeper, they read the same and nothing is compared: rebasing onto a deeper image,
   * or onto a sibling sharing a base, compares only what lies above the shared part.
   */
  shared?: { old: number; new: number };
  onProgress?: (done: number, total: number) => void;
}

/**
 * Steps 1 and 2 of a safe rebase, on devices: makes `top` (writable, still over its old chain) hold every
 * cluster whose contents differ between its old chain and `newBacking` (undefined = no backing file: zeros),
 * then flushes it. The reference itself is not changed here.
 */
export async function rebaseOnto(top: WritableBlockDevice, newBacking: BlockDevice | undefined, options: RebaseOntoOptions): Promise<RebaseResult> {
  const { clusterSize, shared } = options;
  const size = top.size;
  const oldBuffer = new Uint8Array(CHUNK);
  const newBuffer = new Uint8Array(CHUNK);
  let scratch = new Uint8Array(0);
  /** Clusters starting below this offset were rewritten already. */
  let rewrittenTo = 0;
  let comparedBytes = 0;
  let copiedBytes = 0;

  /** Writes clusters [start, end) with their current contents, taken from the window when it holds them. */
  const writeRun = async (start: number, end: number, window: { offset: number; length: number; bytes: Uint8Array | undefined }): Promise<void> => {
    end = Math.min(end, size);
    if (start >= window.offset && end <= window.offset + window.length) {
      if (window.bytes === undefined) await top.writeZeroes(start, end - start);
      else await top.write(window.bytes.subarray(start - window.offset, end - window.offset), start);
    } else {
      if (scratch.length < end - start) scratch = new Uint8Array(end - start);
      const bytes = scratch.subarray(0, end - start);
      await top.read(bytes, start);
      await top.write(bytes, start);
    }
    rewrittenTo = Math.max(rewrittenTo, end);
    copiedBytes += end - start;
  };

  const comparePiece = async (start: number, length: number, oldZero: boolean, newZero: boolean): Promise<void> => {
    const end = start + length;
    for (let pos = start; pos < end; ) {
      const aligned = Math.floor((pos + CHUNK) / clusterSize) * clusterSize;
      const next = Math.min(end, aligned > pos ? aligned : pos + CHUNK);
      const n = next - pos;
      const oldBytes = oldZero ? undefined : oldBuffer.subarray(0, n);
      const newBytes = newZero ? undefined : newBuffer.subarray(0, n);
      if (oldBytes !== undefined) await top.read(oldBytes, pos);
      if (newBytes !== undefined) await readPadded(newBacking, newBytes, pos);
      comparedBytes += n;
      const window = { offset: pos, length: n, bytes: oldBytes };
      let runStart = -1;
      for (let cluster = Math.floor(pos / clusterSize) * clusterSize; cluster < next; cluster += clusterSize) {
        const a = Math.max(cluster, pos) - pos;
        const b = Math.min(cluster + clusterSize, next) - pos;
        let differs = false;
        if (cluster >= rewrittenTo) {
          if (oldBytes === undefined) differs = !isZero(newBytes!.subarray(a, b));
          else if (newBytes === undefined) differs = !isZero(oldBytes.subarray(a, b));
          else differs = !sameBytes(oldBytes.subarray(a, b), newBytes.subarray(a, b));
        }
        if (differs && runStart < 0) runStart = cluster;
        if (!differs && runStart >= 0) {
          await writeRun(runStart, cluster, window);
          runStart = -1;
        }
      }
      if (runStart >= 0) await writeRun(runStart, Math.ceil(next / clusterSize) * clusterSize, window);
      pos = next;
    }
  };

  options.onProgress?.(0, size);
  for await (const extent of walkExtents(top)) {
    const own = extent.depth === 0 && extent.kind !== 'unallocated';
    const oldShared = shared !== undefined && extent.depth >= shared.old;
    // The new backing file itself is the shared layer: everything the old chain answers from there on matches.
    if (!own && !(oldShared && shared!.new === 0)) {
      const oldZero = extent.kind !== 'data' || extent.zeroData === true;
      for await (const piece of newChainRuns(newBacking, extent.offset, extent.length, oldShared ? shared!.new : undefined)) {
        if ((oldZero && piece.zero) || piece.shared) continue;
        await comparePiece(piece.offset, piece.length, oldZero, piece.zero);
      }
    }
    options.onProgress?.(extent.offset + extent.length, size);
  }
  await top.flush();
  return { comparedBytes, copiedBytes };
}

async function identity(hostFiles: HostFiles, name: string): Promise<string> {
  return (await hostFiles.canonical?.(name)) ?? name;
}

/**
 * qemu-img rebase [-u] -b BACKING [-F FMT] FILE. Safe mode: opens FILE over its current chain and the new
 * backing chain, copies what differs (rebaseOnto), then switches the reference. `-b ''` makes the image
 * standalone. Refuses, before anything is written: a backing file without its format (as qemu-img 7.2 does),
 * a new backing file that cannot be opened as the format given, and a new chain that contains FILE itself.
 */
export async function rebaseImage(filename: string, options: RebaseOptions): Promise<RebaseResult> {
  const backing = options.backing;
  if (backing !== '' && options.backingFormat === undefined) {
    throw new Qcow2Error('BAD_ARGUMENT', `Could not change the backing file to '${backing}': backing format must be specified`, { file: filename });
  }
  const reference = backing === '' ? undefined : { file: backing, format: options.backingFormat! };
  const common = { hostFiles: options.hostFiles, ...(options.gate === undefined ? {} : { gate: options.gate }), ...(options.codecs === undefined ? {} : { codecs: options.codecs }) };
  const top = await openImage(filename, {
    ...common,
    ...(options.format === undefined ? {} : { format: options.format }),
    writable: true,
    cache: 'writeback',
    openBacking: options.unsafe !== true,
  });
  try {
    if (!(top instanceof Qcow2Device) || !isWritable(top)) {
      throw new Qcow2Error('BAD_ARGUMENT', `Could not change the backing file to '${backing}': Operation not supported`, { file: filename });
    }
    if (options.unsafe) {
      await setBackingReference(top.image, reference);
      return { comparedBytes: 0, copiedBytes: 0 };
    }
    let newBacking: BlockDevice | undefined;
    if (reference !== undefined) {
      const resolved = combinePath(filename, reference.file);
      try {
        newBacking = await openImage(resolved, { ...common, format: reference.format, ...(options.forceShare ? { forceShare: true } : {}) });
      } catch (error) {
        throw new Qcow2Error('BACKING_NOT_FOUND', `Could not open new backing file '${resolved}': ${(error as Error).message}`, { file: filename, cause: error });
      }
    }
    try {
      const topIdentity = await identity(options.hostFiles, filename);
      let shared: { old: number; new: number } | undefined;
      if (newBacking !== undefined) {
        const newLayers = chainLayers(newBacking);
        const newIdentities: string[] = [];
        for (const layer of newLayers) {
          const id = await identity(options.hostFiles, layer.filename);
          if (id === topIdentity) {
            throw new Qcow2Error('BACKING_LOOP', `Backing file '${reference!.file}' would make the chain loop back to '${filename}'`, { file: filename });
          }
          newIdentities.push(id);
        }
        // The first layer of the new chain that the old chain also has, opened as the same format.
        const oldLayers = chainLayers(top);
        const oldIdentities: string[] = [];
        for (const layer of oldLayers) oldIdentities.push(await identity(options.hostFiles, layer.filename));
        search: for (let j = 0; j < newLayers.length; j++) {
          for (let k = 1; k < oldLayers.length; k++) {
            if (oldIdentities[k] === newIdentities[j] && oldLayers[k]!.format === newLayers[j]!.format) {
              shared = { old: k, new: j };
              break search;
            }
          }
        }
      }
      const result = await rebaseOnto(top, newBacking, {
        clusterSize: top.image.clusterSize,
        ...(shared === undefined ? {} : { shared }),
        ...(options.onProgress === undefined ? {} : { onProgress: options.onProgress }),
      });
      await setBackingReference(top.image, reference);
      return result;
    } finally {
      await newBacking?.close();
    }
  } finally {
    await top.close();
  }
}
