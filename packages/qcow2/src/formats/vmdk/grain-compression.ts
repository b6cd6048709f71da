import type { CompressionCodecs } from '../../engine/compression.js';
import { Qcow2Error } from '../../errors.js';

/**
 * Compressed grains are zlib streams (RFC 1950: a two-byte header, raw deflate, an Adler-32), as qemu's
 * compress()/uncompress() write and read them. Decompression reuses the engine's raw-deflate codec after the
 * header; compression is the caller's (node:zlib in Node, fflate elsewhere).
 */

/** Compresses one grain into a zlib stream. */
export type GrainCompressor = (grain: Uint8Array) => Promise<Uint8Array>;

/** Inflates a grain's zlib stream into at most `grainSize` bytes (fewer for a short last grain). */
export async function inflateGrain(codecs: CompressionCodecs, stored: Uint8Array, grainSize: number): Promise<Uint8Array> {
  if (stored.length < 2) throw new Qcow2Error('COMPRESSION_ERROR', 'compressed grain too short');
  const cmf = stored[0]!;
  const flg = stored[1]!;
  if ((cmf & 0x0f) !== 8 || ((cmf << 8) | flg) % 31 !== 0 || (flg & 0x20) !== 0) {
    throw new Qcow2Error('COMPRESSION_ERROR', 'compressed grain is not a zlib stream');
  }
  try {
    const out = await codecs.inflateRaw(stored.subarray(2), grainSize);
    return out.length > grainSize ? out.subarray(0, grainSize) : out;
  } catch (error) {
    throw new Qcow2Error('COMPRESSION_ERROR', `cannot decompress grain: ${(error as Error).message}`, { cause: error });
  }
}

let fflate: Promise<typeof import('fflate')> | undefined;

/** A grain compressor that runs anywhere (fflate, pure JS, default level), loaded on first use. */
export function portableGrainCompressor(): GrainCompressor {
  return async (grain) => {
    fflate ??= import('fflate');
    return (await fflate).zlibSync(grain);
  };
}
