import type { BlockDevice, Extent, FormatCheckResult, ImageDetails } from '../../device/block-device.js';
import type { HostFiles, ReferenceGate } from '../../device/host-files.js';
import { trustingGate } from '../../device/open-policy.js';
import { combinePath } from '../../device/paths.js';
import { checkRange } from '../../device/range.js';
import type { CompressionCodecs } from '../../engine/compression.js';
import { Qcow2Error } from '../../errors.js';
import { readZeroPadded, type Storage } from '../../io/storage.js';
import { parseDescriptor, type VmdkDescriptor } from './descriptor.js';
import type { VmdkExtent } from './extent.js';
import { FlatExtent } from './flat-extent.js';
import { decodeSparseHeader, GD_AT_END_MARK, magicOf, VMDK_SECTOR, VMDK3_MAGIC, VMDK4_MAGIC } from './sparse-header.js';
import { effectiveHeader, SparseExtent } from './sparse-extent.js';

/** What opening a VMDK may need besides its own file: its extent files (through the gate) and a deflate codec. */
export interface VmdkOpenContext {
  hostFiles?: HostFiles;
  gate?: ReferenceGate;
  codecs?: CompressionCodecs;
}

/** qemu reads at most this much of a descriptor file (vmdk_read_desc). */
const MAX_DESCRIPTOR = 1024 * 1024 - 1;
/** Where qemu looks for an embedded descriptor's CID: 20 sectors from offset 512. */
const EMBEDDED_DESCRIPTOR_OFFSET = 512;
const EMBEDDED_DESCRIPTOR_SIZE = 20 * VMDK_SECTOR;
/** More extents than this in one descriptor are refused (VMware splits at 2 GiB: 1024 extents is 2 TiB). */
const MAX_EXTENTS = 4096;
/** The descriptor-file disk types qemu opens. */
const DESCRIPTOR_TYPES = ['monolithicFlat', 'vmfs', 'vmfsSparse', 'seSparse', 'twoGbMaxExtentSparse', 'twoGbMaxExtentFlat'];

const utf8 = new TextDecoder('utf-8');

async function readText(storage: Storage, offset: number, length: number): Promise<string> {
  const bytes = new Uint8Array(Math.max(0, length));
  const n = await readZeroPadded(storage, bytes, offset);
  return utf8.decode(bytes.subarray(0, n));
}

/**
 * A VMDK as a block device, read-only: a monolithic sparse or stream-optimized file, or a descriptor file whose
 * extents (flat or sparse, e.g. monolithicFlat and twoGbMaxExtentSparse) lie in other files next to it. Extent
 * files are references to other files and pass the gate, as backing files do.
 */
export class VmdkDevice implements BlockDevice {
  readonly format = 'vmdk';
  readonly backing = undefined;
  readonly size: number;
  /** Guest offset where each extent starts. */
  private readonly starts: number[];

  private constructor(
    readonly filename: string,
    private readonly storage: Storage,
    readonly vmdkExtents: VmdkExtent[],
    readonly createType: string,
    readonly cid: number,
    readonly parentCid: number,
  ) {
    this.starts = [];
    let at = 0;
    for (const extent of vmdkExtents) {
      this.starts.push(at);
      at += extent.sectors * VMDK_SECTOR;
    }
    this.size = at;
  }

  static async open(storage: Storage, filename: string, context: VmdkOpenContext = {}): Promise<VmdkDevice> {
    const fileSize = await storage.size();
    if (fileSize < 4) throw new Qcow2Error('TRUNCATED', 'File is too small, not a valid image');
    const head = new Uint8Array(VMDK_SECTOR);
    await readZeroPadded(storage, head, 0);
    const magic = magicOf(head);
    if (magic === VMDK3_MAGIC) throw new Qcow2Error('UNSUPPORTED_FEATURE', 'VMDK3 (COWD, VMware Workstation 4) sparse extents are not supported');
    if (magic !== VMDK4_MAGIC) return VmdkDevice.openDescriptorFile(storage, filename, await readText(storage, 0, Math.min(fileSize, MAX_DESCRIPTOR)), context, []);
    const primary = decodeSparseHeader(head);
    if (primary.capacity === 0 && primary.descriptorOffset !== 0) {
      // A sparse file that only carries a descriptor (its extents elsewhere).
      const offset = primary.descriptorOffset * VMDK_SECTOR;
      return VmdkDevice.openDescriptorFile(storage, filename, await readText(storage, offset, Math.min(fileSize - offset, MAX_DESCRIPTOR)), context, []);
    }
    const header = primary.gdOffset === GD_AT_END_MARK ? await effectiveHeader(storage, fileSize) : primary;
    const extent = await SparseExtent.open(storage, filename, '', header, fileSize, context.codecs);
    const descriptor = parseDescriptor(await readText(storage, EMBEDDED_DESCRIPTOR_OFFSET, EMBEDDED_DESCRIPTOR_SIZE));
    const { cid, parentCid } = checkDescriptor(descriptor);
    return new VmdkDevice(filename, storage, [extent], extent.compressed ? 'streamOptimized' : 'monolithicSparse', cid, parentCid);
  }

  private extentAt(offset: number): number {
    let index = 0;
    while (index + 1 < this.starts.length && this.starts[index + 1]! <= offset) index++;
    return index;
  }

  /** Calls `visit` for each extent's part of [offset, offset+length). */
  private async eachExtent(offset: number, length: number, visit: (extent: VmdkExtent, start: number, at: number, n: number) => Promise<void>): Promise<void> {
    const end = offset + length;
    for (let at = offset, i = this.extentAt(offset); at < end; i++) {
      const start = this.starts[i]!;
      const extent = this.vmdkExtents[i]!;
      const n = Math.min(end, start + extent.sectors * VMDK_SECTOR) - at;
      await visit(extent, start, at, n);
      at += n;
    }
  }

  async read(buffer: Uint8Array, offset: number): Promise<void> {
    checkRange(this, offset, buffer.length);
    await this.eachExtent(offset, buffer.length, (extent, start, at, n) => extent.read(buffer.subarray(at - offset, at - offset + n), at - start));
  }

  async extents(offset: number, length: number): Promise<Extent[]> {
    checkRange(this, offset, length);
    const out: Extent[] = [];
    await this.eachExtent(offset, length, (extent, start, at, n) => extent.extents(out, start, at - start, n));
    return out;
  }

  details(): ImageDetails {
    const [first] = this.vmdkExtents;
    // qemu gives a cluster size only when every extent is alike (and not flat).
    const alike = this.vmdkExtents.every((e) => e.flat === first!.flat && e.compressed === first!.compressed && (e.flat || e.grainSize === first!.grainSize));
    return {
      ...(alike && !first!.flat ? { clusterSize: first!.grainSize! } : {}),
      formatSpecific: {
        type: 'vmdk',
        data: {
          'create-type': this.createType,
          cid: this.cid,
          'parent-cid': this.parentCid,
          extents: this.vmdkExtents.map((e) => ({
            filename: e.fileName,
            format: e.type,
            'virtual-size': e.sectors * VMDK_SECTOR,
            ...(e.flat ? {} : { 'cluster-size': e.grainSize }),
            ...(e.compressed ? { compressed: true } : {}),
          })),
        },
      },
    };
  }

  /** qemu-img check's one test for VMDK: no allocated grain may lie past the end of its file. */
  async check(): Promise<FormatCheckResult> {
    for (let i = 0; i < this.vmdkExtents.length; i++) {
      const sector = await this.vmdkExtents[i]!.firstGrainPastEnd();
      if (sector !== undefined) {
        const messages = [`ERROR: cluster offset for sector ${this.starts[i]! / VMDK_SECTOR + sector} points after EOF`];
        return { corruptions: 1, messages, failure: 'Invalid argument' };
      }
    }
    return { corruptions: 0, messages: [] };
  }

  async allocatedSize(): Promise<number | undefined> {
    let total = (await this.storage.allocatedSize?.()) ?? undefined;
    if (total === undefined) return undefined;
    for (const extent of this.vmdkExtents) {
      if (extent.storage === this.storage) continue;
      const size = await extent.storage.allocatedSize?.();
      if (size === undefined) return undefined;
      total += size;
    }
    return total;
  }

  async close(): Promise<void> {
    const storages = new Set([this.storage, ...this.vmdkExtents.map((e) => e.storage)]);
    await Promise.all([...storages].map((s) => s.close()));
  }

  /** Opens a descriptor file and the extent files it lists (each through the gate), as qemu's vmdk_open_desc_file. */
  static async openDescriptorFile(storage: Storage, filename: string, text: string, context: VmdkOpenContext, opened: Storage[]): Promise<VmdkDevice> {
    const descriptor = parseDescriptor(text);
    const createType = descriptor.createType;
    if (createType === undefined) throw new Qcow2Error('BAD_HEADER', 'invalid VMDK image descriptor');
    if (!DESCRIPTOR_TYPES.includes(createType)) throw new Qcow2Error('UNSUPPORTED_FEATURE', `Unsupported image type '${createType}'`);
    const { cid, parentCid } = checkDescriptor(descriptor);
    if (descriptor.extents.length > MAX_EXTENTS) throw new Qcow2Error('BAD_HEADER', `VMDK descriptor lists ${descriptor.extents.length} extents, more than ${MAX_EXTENTS}`);
    if (descriptor.extents.length === 0) throw new Qcow2Error('BAD_HEADER', 'VMDK descriptor lists no extents');
    const hostFiles = context.hostFiles;
    if (hostFiles === undefined) throw new Qcow2Error('BAD_ARGUMENT', 'a VMDK descriptor file needs its extent files, and no host files were given');
    const gate = context.gate ?? trustingGate;
    const extents: VmdkExtent[] = [];
    try {
      for (const line of descriptor.extents) {
        const resolved = combinePath(filename, line.fileName);
        await gate({ kind: 'extent', name: line.fileName, resolved, from: filename });
        let extentStorage: Storage;
        try {
          extentStorage = await hostFiles.open(resolved, { writable: false });
        } catch (error) {
          throw new Qcow2Error('IO_ERROR', `Could not open '${resolved}': ${(error as Error).message}`, { file: filename, cause: error });
        }
        opened.push(extentStorage);
        const size = await extentStorage.size();
        if (line.type === 'FLAT' || line.type === 'VMFS') {
          extents.push(new FlatExtent(extentStorage, resolved, line.type, line.sectors, line.flatOffset * VMDK_SECTOR, size));
        } else if (line.type === 'SPARSE') {
          const head = new Uint8Array(VMDK_SECTOR);
          await readZeroPadded(extentStorage, head, 0);
          if (magicOf(head) === VMDK3_MAGIC) throw new Qcow2Error('UNSUPPORTED_FEATURE', 'VMDK3 (COWD) sparse extents are not supported');
          if (size < 4 || magicOf(head) !== VMDK4_MAGIC) throw new Qcow2Error('BAD_MAGIC', `Image not in VMDK format ('${resolved}')`);
          const header = await effectiveHeader(extentStorage, size);
          if (header.capacity === 0) throw new Qcow2Error('BAD_HEADER', `sparse extent '${resolved}' is itself a descriptor`);
          extents.push(await SparseExtent.open(extentStorage, resolved, line.type, header, size, context.codecs));
        } else {
          throw new Qcow2Error('UNSUPPORTED_FEATURE', `Unsupported extent type '${line.type}'`);
        }
      }
    } catch (error) {
      await Promise.all(opened.map((s) => s.close().catch(() => {})));
      throw error;
    }
    return new VmdkDevice(filename, storage, extents, createType, cid, parentCid);
  }
}

/** The CIDs qemu requires in a descriptor; a delta disk's parent is not followed (refused). */
function checkDescriptor(descriptor: VmdkDescriptor): { cid: number; parentCid: number } {
  if (descriptor.parentFileNameHint !== undefined) {
    throw new Qcow2Error('UNSUPPORTED_FEATURE', `VMDK delta disks (parentFileNameHint "${descriptor.parentFileNameHint}") are not supported`);
  }
  if (descriptor.cid === undefined || descriptor.parentCid === undefined) throw new Qcow2Error('BAD_HEADER', 'invalid VMDK image descriptor (no CID)');
  return { cid: descriptor.cid, parentCid: descriptor.parentCid };
}

