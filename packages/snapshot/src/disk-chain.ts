/**
 * Opens a disk's image chain for reading, with the formats libvirt uses for it, never with formats probed from
 * the files: a guest can write a qcow2 header into a raw disk (CVE-2015-7548), and a probed format would then
 * make the host read whatever file that header names. Each layer's format comes from the domain XML (driver
 * type, backingStore format); where an inactive definition does not list the backing files, they are followed
 * from the image headers with the format the header states, as libvirt does itself, and refused when no format
 * is stated. Backing references are checked against the chain libvirt describes. All image work is the engine's.
 */
import { realpath } from 'node:fs/promises';
import { Qcow2Device, combinePath, type BlockDevice, type ReferenceGate } from '@qcowkit/qcow2/engine';
import { openImageFile } from '@qcowkit/qcow2/node';
import { SnapshotError } from './errors.js';
import type { DiskLayer } from './hypervisor.js';

const MAX_CHAIN_DEPTH = 64;

async function canonical(path: string): Promise<string> {
  try {
    return await realpath(path);
  } catch {
    return path;
  }
}

/** The layer's format as the engine knows it; anything else is refused (never probed). */
function layerFormat(layer: DiskLayer): 'raw' | 'qcow2' {
  if (layer.format === 'raw' || layer.format === 'qcow2') return layer.format;
  throw new SnapshotError('UNSUPPORTED_FORMAT', `${layer.path ?? 'disk'}: format '${layer.format ?? '(none)'}' is not supported (raw and qcow2 are)`);
}

/** The local path of a file or block device layer. */
export function layerPath(layer: DiskLayer): string {
  if ((layer.type !== 'file' && layer.type !== 'block') || layer.path === undefined) {
    throw new SnapshotError('UNSUPPORTED_DISK', `a ${layer.type} disk${layer.path === undefined ? '' : ` (${layer.path})`} is not a local file or block device`);
  }
  return layer.path;
}

/**
 * Opens `layers` (top-down: the image the guest writes to, then its backing files) as one read-only device.
 * `complete`: the list states the whole chain (a running domain's XML); otherwise images below the listed ones
 * are followed from the headers. Locked as qemu-img locks what it reads, so the image a running guest writes is
 * refused, and its backing files (which the guest only reads) are not; `forceShare` (qemu-img -U, as nova looks
 * at a running guest's disks) reads even the guest's active image, for metadata that may be stale at once.
 */
export async function openChain(layers: readonly DiskLayer[], complete: boolean, options: { forceShare?: boolean } = {}): Promise<BlockDevice> {
  if (layers.length === 0) throw new SnapshotError('NO_SUCH_DISK', 'the disk has no image');
  return openLayer([...layers], complete, 0, new Set(), options.forceShare === true);
}

async function openLayer(layers: DiskLayer[], complete: boolean, index: number, seen: Set<string>, forceShare: boolean): Promise<BlockDevice> {
  const layer = layers[index]!;
  const path = layerPath(layer);
  const format = layerFormat(layer);
  if (index > MAX_CHAIN_DEPTH) throw new SnapshotError('CHAIN_MISMATCH', `${path}: backing chain deeper than ${MAX_CHAIN_DEPTH} images`);
  const identity = await canonical(path);
  if (seen.has(identity)) throw new SnapshotError('CHAIN_MISMATCH', `${path}: the backing chain loops`);
  seen.add(identity);
  const expectedDataFile = layer.dataFile === undefined ? undefined : await canonical(layer.dataFile);
  // Backing files are opened here, layer by layer (openBacking: false); a data file only if the XML names it.
  const gate: ReferenceGate = async (reference) => {
    if (reference.kind === 'data-file' && expectedDataFile !== undefined && (await canonical(reference.resolved)) === expectedDataFile) return;
    throw new SnapshotError('CHAIN_MISMATCH', `${reference.from}: names ${reference.kind === 'data-file' ? 'data file' : 'backing file'} '${reference.name}', which the domain XML does not`);
  };
  const device = await openImageFile(path, { format, openBacking: false, gate, ...(forceShare ? { forceShare } : {}) });
  try {
    const below = layers[index + 1];
    if (!(device instanceof Qcow2Device)) {
      if (below !== undefined) throw new SnapshotError('CHAIN_MISMATCH', `${path}: the domain XML gives a raw image a backing file (${below.path ?? '?'})`);
      return device;
    }
    const backingName = device.image.backingFile;
    if (backingName === undefined || backingName === '') {
      if (below !== undefined) throw new SnapshotError('CHAIN_MISMATCH', `${path}: has no backing file, but the domain XML lists ${below.path ?? 'one'}`);
      return device;
    }
    const resolved = combinePath(path, backingName);
    if (below === undefined) {
      if (complete) throw new SnapshotError('CHAIN_MISMATCH', `${path}: names backing file '${backingName}', but the domain XML says the chain ends here`);
      const headerFormat = device.image.backingFormat;
      if (headerFormat === undefined || headerFormat === '') {
        throw new SnapshotError('BACKING_FORMAT_UNKNOWN', `${path}: the format of backing file '${backingName}' is stated neither by the domain XML nor by the image (it is never probed)`);
      }
      layers.push({ type: 'file', path: resolved, format: headerFormat });
    } else {
      const belowPath = layerPath(below);
      if ((await canonical(resolved)) !== (await canonical(belowPath))) {
        throw new SnapshotError('CHAIN_MISMATCH', `${path}: names backing file '${backingName}', but the domain XML says '${belowPath}'`);
      }
      if (below.format === undefined) {
        const headerFormat = device.image.backingFormat;
        if (headerFormat === undefined || headerFormat === '') {
          throw new SnapshotError('BACKING_FORMAT_UNKNOWN', `${path}: the format of backing file '${belowPath}' is stated neither by the domain XML nor by the image (it is never probed)`);
        }
        layers[index + 1] = { ...below, format: headerFormat };
      }
    }
    const backing = await openLayer(layers, complete, index + 1, seen, forceShare);
    return new Qcow2Device(device.filename, device.image, backing);
  } catch (error) {
    await device.close().catch(() => {});
    throw error;
  }
}

/** The layers of an open chain, top-down: each image's path and the format it was opened with. */
export function chainLayers(device: BlockDevice): DiskLayer[] {
  const out: DiskLayer[] = [];
  for (let layer: BlockDevice | undefined = device; layer !== undefined; layer = layer.backing) {
    out.push({ type: 'file', path: layer.filename, format: layer.format });
  }
  return out;
}
