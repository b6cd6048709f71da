import type { CompressionCodecs } from '../engine/compression.js';
import type { HostFiles } from '../device/host-files.js';
import type { ClusterCompressor } from '../ops/convert-to-qcow2.js';

/**
 * Where an image's bytes come from, passed in by the caller like isomorphic-git's `fs`: the engine itself
 * never imports a file system, so the same operations run in Node (`nodeHost` from `@qcowkit/qcow2/node`), in
 * a browser (`browserHost` from `@qcowkit/qcow2/browser`), over HTTP (`httpHost` from `@qcowkit/qcow2/http`)
 * or in memory (`memoryHost`).
 */
export interface Host {
  /** Opens the files an operation names: the image, its backing and data files, and files it creates. */
  readonly files: HostFiles;
  /** Decompressors for compressed clusters; the portable ones (pure JS deflate, WASM zstd) when absent. */
  readonly codecs?: CompressionCodecs;
  /** Makes the compressor `convert` uses for `compress`; the portable one when absent. */
  readonly compressor?: (type: 'zlib' | 'zstd', clusterSize: number) => ClusterCompressor;
}
