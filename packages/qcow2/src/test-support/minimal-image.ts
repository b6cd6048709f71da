import { encodeHeader, type Qcow2Header } from '../format/header.js';

/**
 * Builds a small, valid, empty qcow2 v3 image in memory (64 KiB clusters: header, refcount table, one refcount
 * block, L1 table), for tests that patch one field to make it hostile. Layout as qemu-img create makes it.
 */
/** A v3 header with 64 KiB clusters laid out as qemu-img create does (refcount table at 1, L1 at 3). */
export function baseHeader(patch: Partial<Qcow2Header> = {}): Qcow2Header {
  return {
    version: 3,
    backingFileOffset: 0,
    backingFileSize: 0,
    clusterBits: 16,
    size: 1 << 30,
    cryptMethod: 0,
    l1Size: 2,
    l1TableOffset: 0x30000,
    refcountTableOffset: 0x10000,
    refcountTableClusters: 1,
    nbSnapshots: 0,
    snapshotsOffset: 0,
    incompatibleFeatures: 0n,
    compatibleFeatures: 0n,
    autoclearFeatures: 0n,
    refcountOrder: 4,
    headerLength: 112,
    compressionType: 0,
    unknownHeaderBytes: new Uint8Array(0),
    extensions: [],
    backingFile: undefined,
    ...patch,
  };
}

export function minimalImage(virtualSize = 64 * 1024 * 1024, patch: Partial<Qcow2Header> = {}): Uint8Array {
  const clusterSize = 65536;
  const l1Entries = Math.max(1, Math.ceil(virtualSize / (clusterSize * (clusterSize / 8))));
  const header = baseHeader({ size: virtualSize, l1Size: l1Entries, ...patch });
  const image = new Uint8Array(4 * clusterSize);
  image.set(encodeHeader(header), 0);
  const view = new DataView(image.buffer);
  // Refcount table -> block at cluster 2; block counts clusters 0..3 once each.
  view.setUint32(clusterSize + 4, 2 * clusterSize);
  for (let cluster = 0; cluster < 4; cluster++) view.setUint16(2 * clusterSize + cluster * 2, 1);
  return image;
}

/** Sets a big-endian u32 / u64 field of an encoded image in place. */
export function patchU32(image: Uint8Array, offset: number, value: number): Uint8Array {
  new DataView(image.buffer, image.byteOffset).setUint32(offset, value);
  return image;
}

export function patchU64(image: Uint8Array, offset: number, value: bigint): Uint8Array {
  new DataView(image.buffer, image.byteOffset).setBigUint64(offset, value);
  return image;
}
