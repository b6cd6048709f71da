/**
 * A worker thread that compresses clusters with zstd (the WASM build, see zstd-wasm-compressor.ts), for
 * zstd-workers.ts. A frame depends only on the cluster and the level, so the output is the same whichever worker
 * compresses a cluster.
 *
 * In:  { id, input: ArrayBuffer (clusters back to back from 0, transferred), bytes (in use), size (bytes per
 *      cluster), level, limit }
 * Out: { id, input (transferred back, for reuse), output: ArrayBuffer (streams back to back, transferred),
 *      lengths: Int32Array (-1: the cluster did not shrink below `limit`) }, or { id, input, error }
 */
import { parentPort } from 'node:worker_threads';
import { zstdClusterCompressor, type ZstdClusterCompress } from './zstd-wasm-compressor.js';

interface Request {
  id: number;
  input: ArrayBuffer;
  /** Bytes of `input` in use (a reused buffer may be longer). */
  bytes: number;
  size: number;
  level: number;
  limit: number;
}

const port = parentPort;
if (port === null) throw new Error('zstd-worker.js runs as a worker thread');
let compressor: { size: number; level: number; compress: ZstdClusterCompress } | undefined;

port.on('message', (request: Request) => {
  void (async () => {
    try {
      if (compressor?.size !== request.size || compressor.level !== request.level) {
        compressor = { size: request.size, level: request.level, compress: await zstdClusterCompressor(request.size, request.level) };
      }
      const input = new Uint8Array(request.input, 0, request.bytes);
      const count = input.length / request.size;
      const lengths = new Int32Array(count);
      const streams: Uint8Array[] = [];
      let total = 0;
      for (let i = 0; i < count; i++) {
        const stream = compressor.compress(input.subarray(i * request.size, (i + 1) * request.size), request.limit);
        if (stream !== undefined) {
          lengths[i] = stream.length;
          streams.push(stream);
          total += stream.length;
        } else lengths[i] = -1;
      }
      const output = new Uint8Array(total);
      let at = 0;
      for (const stream of streams) {
        output.set(stream, at);
        at += stream.length;
      }
      port.postMessage({ id: request.id, input: request.input, output: output.buffer, lengths }, [request.input, output.buffer, lengths.buffer]);
    } catch (error) {
      port.postMessage({ id: request.id, input: request.input, error: error instanceof Error ? error.message : String(error) }, [request.input]);
    }
  })();
});
