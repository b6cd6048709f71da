import { Qcow2Error } from '../errors.js';
import type { CompressionCodecs } from '../engine/compression.js';
import { Qcow2Image } from '../engine/qcow2-image.js';
import type { Storage } from '../io/storage.js';
import { openFormatDevice } from '../formats/open-format.js';
import { PROBE_BYTES, probeBytes } from '../formats/probe.js';
import type { BlockDevice, ImageFormat } from './block-device.js';
import type { HostFiles, ReferenceGate } from './host-files.js';
import { FORCE_SHARE_WRITABLE_MESSAGE, layerPermissions, type ImageAccess } from './image-permissions.js';
import { DEFAULT_MAX_CHAIN_DEPTH, trustingGate } from './open-policy.js';
import { combinePath } from './paths.js';
import { Qcow2Device } from './qcow2-device.js';
import { RawDevice } from './raw-device.js';

/** Options of openImage: the host files, the format, the reference gate, writability and cache mode. */
export interface OpenImageOptions {
  hostFiles: HostFiles;
  /** Opened for qemu-img check: a VHDX with blocks past its end opens, so check can report them (BDRV_O_CHECK). */
  forCheck?: boolean;
  /** The image's format; probed from its first bytes when absent (as qemu-img does for the top image). */
  format?: ImageFormat;
  /** Follow (or refuse) backing and data file references; default: follow, like qemu-img. */
  gate?: ReferenceGate;
  /** Open the top image for writing (its backing chain stays read-only). */
  writable?: boolean;
  /** 'writeback' (default): flush and close fsync; 'unsafe': they only write metadata back (qemu-img -t unsafe). */
  cache?: 'writeback' | 'unsafe';
  /** Open the backing chain (default true); false reads unallocated ranges as zeros, like qemu-img -u. */
  openBacking?: boolean;
  maxChainDepth?: number;
  codecs?: CompressionCodecs;
  l2CacheBytes?: number;
  /**
   * qemu-img -U: let other processes write and resize the images meanwhile (no consistency promised), so an
   * image a running guest writes can be read. Refused with `writable`.
   */
  forceShare?: boolean;
  /** Refuse other writers even on a raw top image, as qemu-img convert does for its sources. */
  refuseWriters?: boolean;
  /** Take the resize permission on a raw top image (qemu-img resize); writable qcow2 images always have it. */
  resize?: boolean;
  /**
   * Take the write permission on the top image without opening it for writing: for an operation that writes it
   * later through another open and must not find it taken then (qemu-img commit holds its image this way).
   */
  lockWrite?: boolean;
}

/** What the open of the layer at `depth` is for, in qemu's terms (see image-permissions.ts). */
function layerAccess(options: OpenImageOptions, depth: number): ImageAccess {
  const top = depth === 0;
  return {
    write: top && (options.writable === true || options.lockWrite === true),
    resize: top && options.resize === true,
    forceShare: options.forceShare === true,
    refuseWriters: top && options.refuseWriters === true,
  };
}

/** Probes a format from the first bytes, as qemu-img does (see probeBytes). */
export async function probeFormat(storage: Storage): Promise<ImageFormat> {
  const head = new Uint8Array(PROBE_BYTES);
  const n = await storage.read(head, 0);
  return probeBytes(head.subarray(0, Math.max(0, n)));
}

const FORMATS: readonly string[] = ['raw', 'qcow2', 'vpc', 'vmdk', 'vhdx'] satisfies ImageFormat[];

export function parseFormat(name: string | undefined, from: string): ImageFormat | undefined {
  if (name === undefined) return undefined;
  if (FORMATS.includes(name)) return name as ImageFormat;
  throw new Qcow2Error('UNKNOWN_FORMAT', `unsupported backing format '${name}'`, { file: from });
}

/**
 * Opens `filename` and, unless told not to, its backing chain: the backing format comes from the header
 * extension (probed only when absent, as qemu does), relative names resolve against the naming image's
 * directory, every reference passes the gate first, and loops or over-deep chains are refused.
 */
export async function openImage(filename: string, options: OpenImageOptions): Promise<BlockDevice> {
  if (options.forceShare && (options.writable || options.lockWrite)) throw new Qcow2Error('BAD_ARGUMENT', FORCE_SHARE_WRITABLE_MESSAGE, { file: filename });
  const device = await openLayer(filename, options.format, options, [], 0);
  if (options.writable && device instanceof Qcow2Device) {
    device.cacheMode = options.cache ?? 'writeback';
    try {
      await device.enableWrites();
    } catch (error) {
      await device.close();
      throw error;
    }
  }
  return device;
}

async function openLayer(
  filename: string,
  format: ImageFormat | undefined,
  options: OpenImageOptions,
  seen: string[],
  depth: number,
): Promise<BlockDevice> {
  const writable = depth === 0 && options.writable === true;
  const maxDepth = options.maxChainDepth ?? DEFAULT_MAX_CHAIN_DEPTH;
  if (depth > maxDepth) {
    throw new Qcow2Error('CHAIN_TOO_DEEP', `backing chain deeper than ${maxDepth} images`, { file: filename });
  }
  const identity = (await options.hostFiles.canonical?.(filename)) ?? filename;
  if (seen.includes(identity)) {
    throw new Qcow2Error('BACKING_LOOP', `backing chain loops back to '${filename}'`, { file: filename });
  }
  const storage = await options.hostFiles.open(filename, { writable });
  try {
    const actualFormat = format ?? (await probeFormat(storage));
    // Locked once the format is known (it decides what is shared) and before any metadata is read, as qemu does.
    const access = layerAccess(options, depth);
    await storage.setPermissions?.(layerPermissions(actualFormat, depth === 0 ? 'top' : 'backing', access));
    if (actualFormat === 'raw') return await RawDevice.open(storage, filename);
    if (actualFormat !== 'qcow2') {
      return await openFormatDevice(actualFormat, storage, filename, {
        hostFiles: options.hostFiles,
        gate: options.gate ?? trustingGate,
        ...(options.codecs === undefined ? {} : { codecs: options.codecs }),
        ...(options.forCheck ? { forCheck: true } : {}),
      });
    }
    const gate = options.gate ?? trustingGate;
    const image = await Qcow2Image.open(storage, {
      ...(options.codecs === undefined ? {} : { codecs: options.codecs }),
      ...(options.l2CacheBytes === undefined ? {} : { l2CacheBytes: options.l2CacheBytes }),
      openDataFile: async (name) => {
        if (name === undefined) throw new Qcow2Error('DATA_FILE_NOT_FOUND', 'image needs an external data file but names none', { file: filename });
        const resolved = combinePath(filename, name);
        await gate({ kind: 'data-file', name, resolved, from: filename });
        return openReferenced(options.hostFiles, resolved, writable, access, filename);
      },
    });
    let backing: BlockDevice | undefined;
    try {
      const backingName = image.backingFile;
      if (backingName !== undefined && backingName !== '' && (options.openBacking ?? true)) {
        const resolved = combinePath(filename, backingName);
        await gate({ kind: 'backing', name: backingName, resolved, from: filename });
        backing = await openBackingLayer(resolved, parseFormat(image.backingFormat, filename), options, [...seen, identity], depth + 1, filename);
      }
    } catch (error) {
      await image.close();
      throw error;
    }
    return new Qcow2Device(filename, image, backing);
  } catch (error) {
    await storage.close().catch(() => {});
    throw error instanceof Qcow2Error ? error.withFile(filename) : error;
  }
}

async function openBackingLayer(
  resolved: string,
  format: ImageFormat | undefined,
  options: OpenImageOptions,
  seen: string[],
  depth: number,
  from: string,
): Promise<BlockDevice> {
  try {
    return await openLayer(resolved, format, options, seen, depth);
  } catch (error) {
    if (error instanceof Qcow2Error && error.code === 'IO_ERROR' && error.file === resolved) {
      throw new Qcow2Error('BACKING_NOT_FOUND', `could not open backing file '${resolved}': ${error.message}`, { file: from, cause: error });
    }
    throw error;
  }
}

async function openReferenced(hostFiles: HostFiles, resolved: string, writable: boolean, access: ImageAccess, from: string): Promise<Storage> {
  let storage: Storage;
  try {
    storage = await hostFiles.open(resolved, { writable });
  } catch (error) {
    throw new Qcow2Error('DATA_FILE_NOT_FOUND', `could not open data file '${resolved}': ${(error as Error).message}`, { file: from, cause: error });
  }
  try {
    await storage.setPermissions?.(layerPermissions('raw', 'data-file', access));
  } catch (error) {
    await storage.close().catch(() => {});
    throw error;
  }
  return storage;
}
