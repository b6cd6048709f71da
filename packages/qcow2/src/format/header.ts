import { Qcow2Error } from '../errors.js';
import {
  CompressionType,
  KNOWN_INCOMPATIBLE_MASK,
  MAX_BACKING_FILE_NAME,
  MAX_CLUSTER_BITS,
  MIN_CLUSTER_BITS,
  QCOW2_MAGIC,
  V2_HEADER_LENGTH,
  V3_MIN_HEADER_LENGTH,
} from './constants.js';
import { decodeHeaderExtensions, encodeHeaderExtensions, type HeaderExtension } from './header-extensions.js';
import { decodeStruct, encodeStruct, structSize, viewOf, type StructSpec } from './struct.js';

/** The fixed part of the header that both versions share (bytes 0..71), minus the feature words. */
const commonLayout = {
  magic: { type: 'u32', offset: 0 },
  version: { type: 'u32', offset: 4 },
  backingFileOffset: { type: 'u64', offset: 8 },
  backingFileSize: { type: 'u32', offset: 16 },
  clusterBits: { type: 'u32', offset: 20 },
  size: { type: 'u64', offset: 24 },
  cryptMethod: { type: 'u32', offset: 32 },
  l1Size: { type: 'u32', offset: 36 },
  l1TableOffset: { type: 'u64', offset: 40 },
  refcountTableOffset: { type: 'u64', offset: 48 },
  refcountTableClusters: { type: 'u32', offset: 56 },
  nbSnapshots: { type: 'u32', offset: 60 },
  snapshotsOffset: { type: 'u64', offset: 64 },
} as const satisfies StructSpec<string>;

/** The v3 additions after the feature words (bytes 96..103). */
const v3TailLayout = {
  refcountOrder: { type: 'u32', offset: 96 },
  headerLength: { type: 'u32', offset: 100 },
} as const satisfies StructSpec<string>;

/** Bytes to read before the cluster size is known. */
export const HEADER_PROBE_BYTES = structSize(v3TailLayout);

/** The qcow2 header (version 2 or 3) with its extensions, as decoded. */
export interface Qcow2Header {
  version: 2 | 3;
  backingFileOffset: number;
  backingFileSize: number;
  clusterBits: number;
  /** Virtual disk size in bytes. */
  size: number;
  cryptMethod: number;
  l1Size: number;
  l1TableOffset: number;
  refcountTableOffset: number;
  refcountTableClusters: number;
  nbSnapshots: number;
  snapshotsOffset: number;
  /** Feature words as bigint: unknown high bits must survive decoding so they can be named in errors. */
  incompatibleFeatures: bigint;
  compatibleFeatures: bigint;
  autoclearFeatures: bigint;
  refcountOrder: number;
  headerLength: number;
  compressionType: number;
  /** Header bytes from 105 up to header_length that this version of the spec does not define: kept on rewrite. */
  unknownHeaderBytes: Uint8Array;
  extensions: HeaderExtension[];
  /** The backing file name exactly as stored (not resolved), or undefined. */
  backingFile: string | undefined;
}

/** Whether bit `bit` is set in a 64-bit feature word. */
export function hasBit(word: bigint, bit: number): boolean {
  return ((word >> BigInt(bit)) & 1n) === 1n;
}

export function setBit(word: bigint, bit: number, on: boolean): bigint {
  const mask = 1n << BigInt(bit);
  return on ? word | mask : word & ~mask;
}

/** Cluster bits from the first bytes of a file, validated, so the caller knows how much of cluster 0 to read. */
export function probeClusterBits(bytes: Uint8Array): number {
  if (bytes.length < V2_HEADER_LENGTH) throw new Qcow2Error('TRUNCATED', `file too short for a qcow2 header (${bytes.length} bytes)`);
  const view = viewOf(bytes);
  if (view.getUint32(0) !== QCOW2_MAGIC) throw new Qcow2Error('BAD_MAGIC', 'not a qcow2 image (bad magic)');
  const version = view.getUint32(4);
  if (version !== 2 && version !== 3) throw new Qcow2Error('UNSUPPORTED_VERSION', `unsupported qcow2 version ${version}`);
  const clusterBits = view.getUint32(20);
  if (clusterBits < MIN_CLUSTER_BITS || clusterBits > MAX_CLUSTER_BITS) {
    throw new Qcow2Error('BAD_HEADER', `cluster bits ${clusterBits} out of range (${MIN_CLUSTER_BITS}..${MAX_CLUSTER_BITS})`);
  }
  return clusterBits;
}

/**
 * Decodes the header, its extensions and the backing file name from the bytes of cluster 0 (or the whole file,
 * when it is shorter). Checks only what is needed to decode; the image-level checks live in the engine.
 */
export function decodeHeader(cluster0: Uint8Array): Qcow2Header {
  const clusterBits = probeClusterBits(cluster0);
  const clusterSize = 2 ** clusterBits;
  const view = viewOf(cluster0);
  const common = decodeStruct(commonLayout, cluster0, 'header');
  const version = common.version as 2 | 3;

  let incompatibleFeatures = 0n;
  let compatibleFeatures = 0n;
  let autoclearFeatures = 0n;
  let refcountOrder = 4;
  let headerLength = V2_HEADER_LENGTH;
  let compressionType: number = CompressionType.Zlib;
  let unknownHeaderBytes = new Uint8Array(0);
  if (version === 3) {
    if (cluster0.length < V3_MIN_HEADER_LENGTH) throw new Qcow2Error('TRUNCATED', 'file too short for a qcow2 v3 header');
    incompatibleFeatures = view.getBigUint64(72);
    compatibleFeatures = view.getBigUint64(80);
    autoclearFeatures = view.getBigUint64(88);
    const tail = decodeStruct(v3TailLayout, cluster0, 'header');
    refcountOrder = tail.refcountOrder;
    headerLength = tail.headerLength;
    if (headerLength < V3_MIN_HEADER_LENGTH) throw new Qcow2Error('BAD_HEADER', `header length ${headerLength} is below 104`);
    if (headerLength > clusterSize) throw new Qcow2Error('BAD_HEADER', `header length ${headerLength} exceeds the cluster size`);
    if (headerLength > cluster0.length) throw new Qcow2Error('TRUNCATED', 'file ends inside the header');
    if (headerLength > V3_MIN_HEADER_LENGTH) compressionType = view.getUint8(104);
    if (headerLength > 112) unknownHeaderBytes = cluster0.slice(112, headerLength);
  }
  if (refcountOrder > 6) throw new Qcow2Error('BAD_HEADER', `refcount order ${refcountOrder} is above 6`);

  // Extensions run from the end of the header to the end of cluster 0 at most.
  const extensionsEnd = Math.min(
    cluster0.length,
    clusterSize,
    common.backingFileOffset > headerLength ? common.backingFileOffset : clusterSize,
  );
  const extensions = decodeHeaderExtensions(cluster0, headerLength, extensionsEnd);

  let backingFile: string | undefined;
  if (common.backingFileOffset !== 0) {
    if (common.backingFileSize > MAX_BACKING_FILE_NAME) {
      throw new Qcow2Error('BAD_HEADER', `backing file name too long (${common.backingFileSize} bytes, max ${MAX_BACKING_FILE_NAME})`);
    }
    const end = common.backingFileOffset + common.backingFileSize;
    if (end > clusterSize) throw new Qcow2Error('BAD_HEADER', 'backing file name does not lie in the first cluster');
    if (end > cluster0.length) throw new Qcow2Error('TRUNCATED', 'file ends inside the backing file name');
    backingFile = new TextDecoder().decode(cluster0.subarray(common.backingFileOffset, end));
  }

  return {
    version,
    backingFileOffset: common.backingFileOffset,
    backingFileSize: common.backingFileSize,
    clusterBits,
    size: common.size,
    cryptMethod: common.cryptMethod,
    l1Size: common.l1Size,
    l1TableOffset: common.l1TableOffset,
    refcountTableOffset: common.refcountTableOffset,
    refcountTableClusters: common.refcountTableClusters,
    nbSnapshots: common.nbSnapshots,
    snapshotsOffset: common.snapshotsOffset,
    incompatibleFeatures,
    compatibleFeatures,
    autoclearFeatures,
    refcountOrder,
    headerLength,
    compressionType,
    unknownHeaderBytes,
    extensions,
    backingFile,
  };
}

/** The names qemu gives the incompatible feature bits it knows. */
const builtinIncompatibleNames: Record<number, string> = {
  0: 'dirty bit',
  1: 'corrupt bit',
  2: 'external data file',
  3: 'compression type',
  4: 'extended L2 entries',
};

/** Incompatible bits this engine does not understand, as a list of bit numbers. */
export function unknownIncompatibleBits(header: Qcow2Header): number[] {
  const bits: number[] = [];
  const unknown = header.incompatibleFeatures & ~BigInt(KNOWN_INCOMPATIBLE_MASK);
  for (let bit = 0; bit < 64; bit++) if (hasBit(unknown, bit)) bits.push(bit);
  return bits;
}

export function incompatibleFeatureName(bit: number, featureNames: { type: number; bit: number; name: string }[]): string {
  const fromTable = featureNames.find((f) => f.type === 0 && f.bit === bit);
  return fromTable?.name ?? builtinIncompatibleNames[bit] ?? `unknown incompatible feature bit ${bit}`;
}

/** Bytes encodeHeader would produce: header, extensions with end marker, backing file name. */
export function encodedHeaderSize(header: Qcow2Header): number {
  const nameBytes = header.backingFile === undefined ? 0 : new TextEncoder().encode(header.backingFile).length;
  return (header.version === 2 ? V2_HEADER_LENGTH : header.headerLength) + encodeHeaderExtensions(header.extensions).length + nameBytes;
}

/**
 * Encodes the header, extensions and backing file name into a new cluster-0 prefix. The backing file name is
 * placed right after the extensions (as qemu does) and header.backingFileOffset/Size are updated to match.
 */
export function encodeHeader(header: Qcow2Header): Uint8Array {
  const clusterSize = 2 ** header.clusterBits;
  const extensionBytes = encodeHeaderExtensions(header.extensions);
  const nameBytes = header.backingFile === undefined ? new Uint8Array(0) : new TextEncoder().encode(header.backingFile);
  const headerLength = header.version === 2 ? V2_HEADER_LENGTH : header.headerLength;
  const total = headerLength + extensionBytes.length + nameBytes.length;
  if (total > clusterSize) throw new Qcow2Error('BAD_HEADER', 'header, extensions and backing file name do not fit in the first cluster');
  const out = new Uint8Array(total);
  header.backingFileOffset = nameBytes.length === 0 ? 0 : headerLength + extensionBytes.length;
  header.backingFileSize = nameBytes.length;
  encodeStruct(
    commonLayout,
    {
      magic: QCOW2_MAGIC,
      version: header.version,
      backingFileOffset: header.backingFileOffset,
      backingFileSize: header.backingFileSize,
      clusterBits: header.clusterBits,
      size: header.size,
      cryptMethod: header.cryptMethod,
      l1Size: header.l1Size,
      l1TableOffset: header.l1TableOffset,
      refcountTableOffset: header.refcountTableOffset,
      refcountTableClusters: header.refcountTableClusters,
      nbSnapshots: header.nbSnapshots,
      snapshotsOffset: header.snapshotsOffset,
    },
    out,
  );
  const view = viewOf(out);
  if (header.version === 3) {
    view.setBigUint64(72, header.incompatibleFeatures);
    view.setBigUint64(80, header.compatibleFeatures);
    view.setBigUint64(88, header.autoclearFeatures);
    encodeStruct(v3TailLayout, { refcountOrder: header.refcountOrder, headerLength }, out);
    if (headerLength > V3_MIN_HEADER_LENGTH) view.setUint8(104, header.compressionType);
    if (headerLength > 112) out.set(header.unknownHeaderBytes.subarray(0, headerLength - 112), 112);
  }
  out.set(extensionBytes, headerLength);
  out.set(nameBytes, headerLength + extensionBytes.length);
  return out;
}
