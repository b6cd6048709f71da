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
import { zstdBatchCompressor, type ZstdBatchCompress } from './zstd-wasm-compressor.js';

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
let compressor: { level: number; compress: ZstdBatchCompress } | undefined;

port.on('message', (request: Request) => {
  void (async () => {
    try {
      if (compressor?.level !== request.level) compressor = { level: request.level, compress: await zstdBatchCompressor(request.level) };
      const { output, lengths } = compressor.compress(new Uint8Array(request.input, 0, request.bytes), request.size, request.limit);
      port.postMessage({ id: request.id, input: request.input, output: output.buffer, lengths }, [request.input, output.buffer, lengths.buffer]);
    } catch (error) {
      port.postMessage({ id: request.id, input: request.input, error: error instanceof Error ? error.message : String(error) }, [request.input]);
    }
  })();
});
