import { Qcow2Error } from '../errors.js';
import { CompressionType } from '../format/constants.js';

/**
 * Decompressors for compressed clusters. The engine ships portable ones (pure JS deflate, WASM zstd); the Node
 * entry point swaps in node:zlib for deflate, which is several times faster.
 */
export interface CompressionCodecs {
  /** Raw deflate (no zlib header). Must return at least `outputSize` bytes, or fewer when the stream is short. */
  inflateRaw(input: Uint8Array, outputSize: number): Uint8Array | Promise<Uint8Array>;
  /** One zstd frame, exactly (trailing padding already cut off). */
  zstdDecompress(frame: Uint8Array, outputSize: number): Uint8Array | Promise<Uint8Array>;
}

/**
 * The length of the zstd frame at the start of `bytes`, walking its block headers (RFC 8878 §3.1.1).
 * qemu stores a compressed cluster padded to 512-byte sectors, and one-shot zstd decoders reject trailing bytes.
 */
export function zstdFrameLength(bytes: Uint8Array): number {
  const fail = (why: string): never => {
    throw new Qcow2Error('COMPRESSION_ERROR', `invalid zstd frame: ${why}`);
  };
  if (bytes.length < 6) fail('too short');
  const magic = (bytes[0]! | (bytes[1]! << 8) | (bytes[2]! << 16) | (bytes[3]! << 24)) >>> 0;
  if (magic !== 0xfd2fb528) fail('bad magic');
  const descriptor = bytes[4]!;
  const contentSizeFlag = descriptor >> 6;
  const singleSegment = (descriptor >> 5) & 1;
  const hasChecksum = (descriptor >> 2) & 1;
  const dictIdFlag = descriptor & 3;
  const dictIdBytes = [0, 1, 2, 4][dictIdFlag]!;
  const contentSizeBytes = [singleSegment ? 1 : 0, 2, 4, 8][contentSizeFlag]!;
  let offset = 5 + (singleSegment ? 0 : 1) + dictIdBytes + contentSizeBytes;
  for (;;) {
    if (offset + 3 > bytes.length) fail('truncated block header');
    const header = bytes[offset]! | (bytes[offset + 1]! << 8) | (bytes[offset + 2]! << 16);
    offset += 3;
    const last = header & 1;
    const blockType = (header >> 1) & 3;
    const blockSize = header >>> 3;
    if (blockType === 3) fail('reserved block type');
    offset += blockType === 1 ? 1 : blockSize;
    if (offset > bytes.length) fail('truncated block');
    if (last) break;
  }
  offset += hasChecksum ? 4 : 0;
  if (offset > bytes.length) fail('truncated checksum');
  return offset;
}

/** Decompresses one compressed cluster's stored bytes into exactly `clusterSize` bytes. */
export async function decompressCluster(
  codecs: CompressionCodecs,
  compressionType: number,
  stored: Uint8Array,
  clusterSize: number,
): Promise<Uint8Array> {
  let out: Uint8Array;
  try {
    if (compressionType === CompressionType.Zlib) out = await codecs.inflateRaw(stored, clusterSize);
    else if (compressionType === CompressionType.Zstd) out = await codecs.zstdDecompress(stored.subarray(0, zstdFrameLength(stored)), clusterSize);
    else throw new Qcow2Error('UNSUPPORTED_FEATURE', `unknown compression type ${compressionType}`);
  } catch (error) {
    if (error instanceof Qcow2Error) throw error;
    throw new Qcow2Error('COMPRESSION_ERROR', `cannot decompress cluster: ${(error as Error).message}`, { cause: error });
  }
  // qemu fails a compressed read whose stream does not fill the whole cluster.
  if (out.length < clusterSize) throw new Qcow2Error('COMPRESSION_ERROR', `compressed cluster decompresses to ${out.length} bytes, not ${clusterSize}`);
  return out.length === clusterSize ? out : out.subarray(0, clusterSize);
}
