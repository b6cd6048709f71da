import { Qcow2Error } from '../errors.js';
import type { BlockDevice, ImageFormat } from '../device/block-device.js';
import type { HostFiles, ReferenceGate } from '../device/host-files.js';
import { layerPermissions, type ImageAccess } from '../device/image-permissions.js';
import { parseFormat, probeFormat } from '../device/open-image.js';
import { DEFAULT_MAX_CHAIN_DEPTH, trustingGate } from '../device/open-policy.js';
import { Qcow2Device } from '../device/qcow2-device.js';
import { RawDevice } from '../device/raw-device.js';
import { Qcow2Image } from '../engine/qcow2-image.js';
import { openFormatDevice } from '../formats/open-format.js';
import type { Storage } from '../io/storage.js';
import { cString, fullBackingFilename, hasProtocol } from './backing-names.js';

/**
 * Opening an image the way `qemu-img info` does, its metadata only (info itself is image-info.ts): the top
 * image and, for --backing-chain, each backing file by the name info reports, through the reference gate.
 */

/** Options of openImageForInfo. */
export interface OpenForInfoOptions {
  hostFiles: HostFiles;
  /** The top image's format; probed when absent. Also used for backing files that do not name theirs, as qemu-img does. */
  format?: ImageFormat;
  /** Also open the backing chain, each layer metadata-only (for --backing-chain). Default false. */
  backingChain?: boolean;
  /** Decides whether a backing reference may be followed (only consulted with backingChain). */
  gate?: ReferenceGate;
  maxChainDepth?: number;
  /** qemu-img info -U: take no lock at all, so an image a running guest writes can be looked at. */
  forceShare?: boolean;
  /** Lock as a reader of guest data (qemu-img snapshot -l), not as info's metadata-only open. */
  lockAsReader?: boolean;
}

/** Stands in for an external data file that a metadata-only view does not open. */
function unopenedDataFile(name: string): Storage {
  const refuse = (): Promise<never> =>
    Promise.reject(new Qcow2Error('DATA_FILE_NOT_FOUND', `external data file '${name}' is not open (the image was opened for its metadata only)`, { file: name }));
  return { name, read: refuse, write: refuse, size: refuse, truncate: refuse, flush: async () => {}, close: async () => {} };
}

function parseBackingFormat(name: string | undefined, from: string): ImageFormat | undefined {
  return name === '' ? undefined : parseFormat(name, from);
}

interface OpenedLayer {
  filename: string;
  image?: Qcow2Image;
  /** A layer that is not qcow2 (raw, vpc, vmdk, vhdx): opened as its device. */
  raw?: BlockDevice;
}

/** Opens one layer; `from` is the image that names it as its backing file (undefined for the top). */
async function openLayer(filename: string, format: ImageFormat | undefined, hostFiles: HostFiles, from: string | undefined, gate: ReferenceGate, access: ImageAccess): Promise<OpenedLayer> {
  let storage: Storage;
  try {
    storage = await hostFiles.open(filename, { writable: false });
  } catch (error) {
    if (from === undefined) throw error instanceof Qcow2Error ? error.withFile(filename) : error;
    throw new Qcow2Error('BACKING_NOT_FOUND', `could not open backing file '${filename}': ${(error as Error).message}`, { file: from, cause: error });
  }
  try {
    const actualFormat = format ?? (await probeFormat(storage));
    // Locked as qemu-img info locks (metadata only: nothing for raw; other formats refuse writers unless -U), or as a reader.
    await storage.setPermissions?.(layerPermissions(actualFormat, 'top', access));
    if (actualFormat === 'raw') return { filename, raw: await RawDevice.open(storage, filename) };
    if (actualFormat !== 'qcow2') return { filename, raw: await openFormatDevice(actualFormat, storage, filename, { hostFiles, gate }) };
    const image = await Qcow2Image.open(storage, {
      metadataOnly: true,
      openDataFile: async (name) => {
        if (name === undefined) throw new Qcow2Error('DATA_FILE_NOT_FOUND', "'data-file' is required for this image");
        return unopenedDataFile(name);
      },
    });
    return { filename, image };
  } catch (error) {
    await storage.close().catch(() => {});
    throw error instanceof Qcow2Error ? error.withFile(filename) : error;
  }
}

/**
 * Opens an image the way `qemu-img info` does: its metadata only. Neither the backing file nor the external
 * data file is opened (a missing or unreachable one does not matter; reading guest data from the result fails),
 * unless `backingChain` asks for the backing files, which are then opened the same way, one by one, by their
 * full-backing-filename, each through the gate, with loops and over-deep chains refused.
 */
export async function openImageForInfo(filename: string, options: OpenForInfoOptions): Promise<BlockDevice> {
  const gate = options.gate ?? trustingGate;
  const maxDepth = options.maxChainDepth ?? DEFAULT_MAX_CHAIN_DEPTH;
  const layers: OpenedLayer[] = [];
  try {
    let name = filename;
    let format = options.format;
    let from: string | undefined;
    const seen = new Set<string>();
    for (;;) {
      seen.add((await options.hostFiles.canonical?.(name)) ?? name);
      const layer = await openLayer(name, format, options.hostFiles, from, gate, { metadataOnly: options.lockAsReader !== true, forceShare: options.forceShare === true });
      layers.push(layer);
      const image = layer.image;
      const backingName = image?.backingFile === undefined ? '' : cString(image.backingFile);
      if (!options.backingChain || image === undefined || backingName === '') break;

      if (layers.length > maxDepth) throw new Qcow2Error('CHAIN_TOO_DEEP', `backing chain deeper than ${maxDepth} images`, { file: filename });
      const next = fullBackingFilename(name, backingName);
      await gate({ kind: 'backing', name: backingName, resolved: next, from: name });
      if (!next.startsWith('/') && hasProtocol(next) && !/^https?:\/\//i.test(next)) {
        throw new Qcow2Error('BACKING_NOT_FOUND', `backing file '${next}' names a protocol, which is not supported`, { file: name });
      }
      if (seen.has((await options.hostFiles.canonical?.(next)) ?? next)) {
        throw new Qcow2Error('BACKING_LOOP', `Backing file '${next}' creates an infinite loop.`, { file: name });
      }
      // Like qemu-img: the named backing format, else whatever format the layer above was opened with.
      format = parseBackingFormat(image.backingFormat, name) ?? format;
      from = name;
      name = next;
    }
  } catch (error) {
    await Promise.all(layers.map((layer) => (layer.image ?? layer.raw)!.close().catch(() => {})));
    throw error;
  }
  let device: BlockDevice | undefined;
  for (const layer of layers.reverse()) {
    device = layer.raw ?? new Qcow2Device(layer.filename, layer.image!, device);
  }
  return device!;
}
