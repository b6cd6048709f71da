import { promisify } from 'node:util';
import { constants, deflate } from 'node:zlib';
import type { GrainCompressor } from '../formats/vmdk/grain-compression.js';

/** Made on first use: the CLI's bundle loads node:zlib only when it is called. */
let deflateAsync: ((input: Uint8Array, options: object) => Promise<Buffer>) | undefined;

/**
 * Compresses a VMDK grain into a zlib stream (header, deflate, Adler-32) at the default level, as qemu's
 * compress() does; on libuv's thread pool, so the grains of a batch compress in parallel.
 */
export const grainCompressor: GrainCompressor = async (grain) => {
  deflateAsync ??= promisify(deflate);
  const out = await deflateAsync(grain, { level: constants.Z_DEFAULT_COMPRESSION });
  return new Uint8Array(out.buffer, out.byteOffset, out.length);
};
