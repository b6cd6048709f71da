import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { Qcow2Error } from '../errors.js';

/** zstd's default level, which qemu uses too. */
export const ZSTD_LEVEL = 3;

interface Pending {
  resolve: (reply: { output: ArrayBuffer; lengths: Int32Array }) => void;
  reject: (error: Error) => void;
}

interface PoolWorker {
  worker: Worker;
  busy: number;
}

/**
 * zstd compression of clusters on worker threads (the WASM codec is single-threaded): one worker per core, at
 * most four. Clusters go in batches (a chunk's worth per message), so messaging costs little against the
 * compression. Workers start on first use, are unreferenced while idle (they never keep the process alive), and
 * each batch goes to the least busy one. A frame depends only on the cluster, so the result does not depend on
 * the thread count or on which worker took a batch.
 */
export class ZstdWorkers {
  private readonly workers: PoolWorker[] = [];
  private readonly pending = new Map<number, Pending>();
  /** Input buffers the workers sent back: batches reuse them, so memory stays at the batches in flight. */
  private readonly spare: ArrayBuffer[] = [];
  private nextId = 0;

  constructor(
    private readonly threads = Math.max(1, Math.min(4, availableParallelism())),
    /** The worker script (zstd-worker.js beside this module; tests running from sources point at the build). */
    private readonly script: URL = new URL('./zstd-worker.js', import.meta.url),
  ) {}

  /**
   * Compressed streams of `clusters` (all of one size), undefined where a stream would be `limit` bytes or more.
   * The clusters travel packed into one transferred buffer: posting views of a larger buffer would clone all of
   * it for each view.
   */
  async compress(clusters: Uint8Array[], limit: number): Promise<Array<Uint8Array | undefined>> {
    if (clusters.length === 0) return [];
    const size = clusters[0]!.length;
    const bytes = size * clusters.length;
    const reused = this.spare.findIndex((b) => b.byteLength >= bytes);
    const input = reused < 0 ? new Uint8Array(bytes) : new Uint8Array(this.spare.splice(reused, 1)[0]!, 0, bytes);
    clusters.forEach((cluster, i) => input.set(cluster, i * size));
    const target = this.pick();
    const id = this.nextId++;
    target.busy++;
    target.worker.ref();
    const { output, lengths } = await new Promise<{ output: ArrayBuffer; lengths: Int32Array }>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      target.worker.postMessage({ id, input: input.buffer, bytes, size, level: ZSTD_LEVEL, limit }, [input.buffer]);
    }).finally(() => this.done(target));
    const streams: Array<Uint8Array | undefined> = [];
    let at = 0;
    for (const length of lengths) {
      streams.push(length < 0 ? undefined : new Uint8Array(output, at, length));
      at += Math.max(0, length);
    }
    return streams;
  }

  /** Stops the workers (pending batches fail). */
  async close(): Promise<void> {
    await Promise.all(this.workers.splice(0).map(({ worker }) => worker.terminate()));
  }

  private done(target: PoolWorker): void {
    target.busy--;
    if (target.busy === 0) target.worker.unref();
  }

  private pick(): PoolWorker {
    const idle = this.workers.find((w) => w.busy === 0);
    if (idle !== undefined) return idle;
    if (this.workers.length < this.threads) return this.spawn();
    return this.workers.reduce((a, b) => (b.busy < a.busy ? b : a));
  }

  private spawn(): PoolWorker {
    const worker = new Worker(this.script);
    const entry: PoolWorker = { worker, busy: 0 };
    worker.unref();
    worker.on('message', (message: { id: number; input: ArrayBuffer; output?: ArrayBuffer; lengths?: Int32Array; error?: string }) => {
      if (this.spare.length < this.threads * 4) this.spare.push(message.input);
      const pending = this.pending.get(message.id);
      if (pending === undefined) return;
      this.pending.delete(message.id);
      if (message.output !== undefined && message.lengths !== undefined) pending.resolve({ output: message.output, lengths: message.lengths });
      else pending.reject(new Qcow2Error('COMPRESSION_ERROR', `zstd compression failed: ${message.error}`));
    });
    worker.on('error', (error) => this.failAll(new Qcow2Error('COMPRESSION_ERROR', `zstd worker failed: ${error.message}`, { cause: error })));
    this.workers.push(entry);
    return entry;
  }

  private failAll(error: Error): void {
    for (const pending of this.pending.values()) pending.reject(error);
    this.pending.clear();
  }
}
