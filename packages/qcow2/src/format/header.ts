import { Qcow2Error } from '../errors.js';
import {
  CompressionType,
  KNOWN_INCOMPATIBLE_MASK,
  MAX_BACKING_FILE_NAME,
  MAX_CLUSTER_BITS,
  MIN_CLUSTER_BITS,
  QCOW2_MAGIC,
  V2_HEADER_LENGTH,
  V3_HEADER_LENGTH,
  V3_MIN_HEADER_LENGTH,
} from './constants.js';
import { QEMU_FEATURE_NAMES, decodeHeaderExtensions, encodeHeaderExtensions, type HeaderExtension } from './header-extensions.js';
import { decodeStruct, encodeStruct, structSize, viewOf, writeU64, type StructSpec } from './struct.js';

/**
 * Where each header field sits: its byte offset and type, as the specification's table gives them (big-endian;
 * `bits64` is a feature word kept as a bigint). Fields from incompatibleFeatures on exist in version 3 only.
 * Writers that change fields in place encode them with encodeHeaderFields, never with offsets of their own.
 */
export const HEADER_LAYOUT = {
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
  incompatibleFeatures: { type: 'bits64', offset: 72 },
  compatibleFeatures: { type: 'bits64', offset: 80 },
  autoclearFeatures: { type: 'bits64', offset: 88 },
  refcountOrder: { type: 'u32', offset: 96 },
  headerLength: { type: 'u32', offset: 100 },
  compressionType: { type: 'u8', offset: 104 },
} as const;

/** A field of the fixed header (HEADER_LAYOUT's names, which are also Qcow2Header's). */
export type HeaderField = keyof typeof HEADER_LAYOUT;

const FIELD_BYTES = { u8: 1, u32: 4, u64: 8, bits64: 8 } as const;

/** The numeric fields of a run of the layout, as a struct spec (the feature words are read apart, as bigints). */
function numericLayout<K extends HeaderField>(fields: readonly K[]): StructSpec<K> {
  const spec = {} as Record<K, { type: 'u8' | 'u32' | 'u64'; offset: number }>;
  for (const name of fields) {
    const field: { type: string; offset: number } = HEADER_LAYOUT[name];
    if (field.type === 'bits64') throw new Error(`${name} is a feature word`);
    spec[name] = field as { type: 'u8' | 'u32' | 'u64'; offset: number };
  }
  return spec;
}

/** The fixed part of the header that both versions share (bytes 0..71). */
const commonLayout = numericLayout([
  'magic', 'version', 'backingFileOffset', 'backingFileSize', 'clusterBits', 'size', 'cryptMethod', 'l1Size',
  'l1TableOffset', 'refcountTableOffset', 'refcountTableClusters', 'nbSnapshots', 'snapshotsOffset',
] as const);

/** The v3 additions after the feature words (bytes 96..103). */
const v3TailLayout = numericLayout(['refcountOrder', 'headerLength'] as const);

/** Where the bytes this version of the spec does not define start (after compression_type and its padding). */
const UNKNOWN_HEADER_BYTES_AT = V3_HEADER_LENGTH;

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
  if (view.getUint32(HEADER_LAYOUT.magic.offset) !== QCOW2_MAGIC) throw new Qcow2Error('BAD_MAGIC', 'not a qcow2 image (bad magic)');
  const version = view.getUint32(HEADER_LAYOUT.version.offset);
  if (version !== 2 && version !== 3) throw new Qcow2Error('UNSUPPORTED_VERSION', `unsupported qcow2 version ${version}`);
  const clusterBits = view.getUint32(HEADER_LAYOUT.clusterBits.offset);
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
    incompatibleFeatures = view.getBigUint64(HEADER_LAYOUT.incompatibleFeatures.offset);
    compatibleFeatures = view.getBigUint64(HEADER_LAYOUT.compatibleFeatures.offset);
    autoclearFeatures = view.getBigUint64(HEADER_LAYOUT.autoclearFeatures.offset);
    const tail = decodeStruct(v3TailLayout, cluster0, 'header');
    refcountOrder = tail.refcountOrder;
    headerLength = tail.headerLength;
    if (headerLength < V3_MIN_HEADER_LENGTH) throw new Qcow2Error('BAD_HEADER', `header length ${headerLength} is below 104`);
    if (headerLength > clusterSize) throw new Qcow2Error('BAD_HEADER', `header length ${headerLength} exceeds the cluster size`);
    if (headerLength > cluster0.length) throw new Qcow2Error('TRUNCATED', 'file ends inside the header');
    if (headerLength > V3_MIN_HEADER_LENGTH) compressionType = view.getUint8(HEADER_LAYOUT.compressionType.offset);
    if (headerLength > UNKNOWN_HEADER_BYTES_AT) unknownHeaderBytes = cluster0.slice(UNKNOWN_HEADER_BYTES_AT, headerLength);
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


/** Incompatible bits this engine does not understand, as a list of bit numbers. */
export function unknownIncompatibleBits(header: Qcow2Header): number[] {
  const bits: number[] = [];
  const unknown = header.incompatibleFeatures & ~BigInt(KNOWN_INCOMPATIBLE_MASK);
  for (let bit = 0; bit < 64; bit++) if (hasBit(unknown, bit)) bits.push(bit);
  return bits;
}

export function incompatibleFeatureName(bit: number, featureNames: { type: number; bit: number; name: string }[]): string {
  const fromTable = featureNames.find((f) => f.type === 0 && f.bit === bit);
  // Without a table entry, the name qemu gives the bits it knows.
  const builtin = QEMU_FEATURE_NAMES.find((f) => f.type === 0 && f.bit === bit);
  return fromTable?.name ?? builtin?.name ?? `unknown incompatible feature bit ${bit}`;
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
    view.setBigUint64(HEADER_LAYOUT.incompatibleFeatures.offset, header.incompatibleFeatures);
    view.setBigUint64(HEADER_LAYOUT.compatibleFeatures.offset, header.compatibleFeatures);
    view.setBigUint64(HEADER_LAYOUT.autoclearFeatures.offset, header.autoclearFeatures);
    encodeStruct(v3TailLayout, { refcountOrder: header.refcountOrder, headerLength }, out);
    if (headerLength > V3_MIN_HEADER_LENGTH) view.setUint8(HEADER_LAYOUT.compressionType.offset, header.compressionType);
    if (headerLength > UNKNOWN_HEADER_BYTES_AT) out.set(header.unknownHeaderBytes.subarray(0, headerLength - UNKNOWN_HEADER_BYTES_AT), UNKNOWN_HEADER_BYTES_AT);
  }
  out.set(extensionBytes, headerLength);
  out.set(nameBytes, headerLength + extensionBytes.length);
  return out;
}

/**
 * Header fields `first` through `last` (in on-disk order, every field between them included) encoded from
 * `header`, as one run of bytes at `offset`: what an in-place header change writes in ONE write, so that it lands
 * whole or not at all (a write inside the first page is atomic against a process kill).
 */
export function encodeHeaderFields(header: Qcow2Header, first: HeaderField, last: HeaderField): { offset: number; bytes: Uint8Array } {
  const offset = HEADER_LAYOUT[first].offset;
  const end = HEADER_LAYOUT[last].offset + FIELD_BYTES[HEADER_LAYOUT[last].type];
  if (end <= offset) throw new RangeError(`header field ${last} comes before ${first}`);
  const bytes = new Uint8Array(end - offset);
  const view = viewOf(bytes);
  for (const name of Object.keys(HEADER_LAYOUT) as HeaderField[]) {
    const field = HEADER_LAYOUT[name];
    if (field.offset < offset || field.offset >= end) continue;
    const at = field.offset - offset;
    const value = name === 'magic' ? QCOW2_MAGIC : (header as unknown as Record<string, number | bigint>)[name]!;
    switch (field.type) {
      case 'u8': view.setUint8(at, value as number); break;
      case 'u32': view.setUint32(at, value as number); break;
      case 'u64': writeU64(view, at, value as number); break;
      case 'bits64': view.setBigUint64(at, value as bigint); break;
    }
  }
  return { offset, bytes };
}

/** The run of header fields, in on-disk order, that covers every field named (for encodeHeaderFields). */
export function headerFieldSpan(names: readonly HeaderField[]): { first: HeaderField; last: HeaderField } {
  if (names.length === 0) throw new RangeError('no header field named');
  let first = names[0]!;
  let last = names[0]!;
  for (const name of names) {
    if (HEADER_LAYOUT[name].offset < HEADER_LAYOUT[first].offset) first = name;
    if (HEADER_LAYOUT[name].offset > HEADER_LAYOUT[last].offset) last = name;
  }
  return { first, last };
}
