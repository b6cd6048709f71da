/** Writes a (chain) device into a standalone image file with the engine: what `qcowkit convert` does. */
import { Qcow2Device, convertToQcow2, convertToRaw, createQcow2, type BlockDevice } from '@qcowkit/qcow2/engine';
import { FileStorage, clusterCompressor, openImageFile } from '@qcowkit/qcow2/node';

export type OutputFormat = 'qcow2' | 'raw';

/**
 * Keeps count of the calls in flight on `target` (writes of the output, reads of the source), so it is closed
 * only after the last one ended. The engine's convert loops overlap reads and writes; when one of them (or the
 * progress callback) throws, the others are still running, and closing a file under them would turn them into
 * unhandled rejections.
 */
export function trackCalls<T extends object>(target: T, methods: ReadonlyArray<keyof T>): () => Promise<void> {
  const inflight = new Set<Promise<unknown>>();
  for (const method of methods) {
    const original = target[method] as unknown as (...args: unknown[]) => Promise<unknown>;
    (target as Record<keyof T, unknown>)[method] = (...args: unknown[]): Promise<unknown> => {
      const promise = original.apply(target, args);
      inflight.add(promise);
      promise.then(
        () => inflight.delete(promise),
        () => inflight.delete(promise),
      );
      return promise;
    };
  }
  return async () => {
    // A write that ends may be followed at once by the next one of the same chunk: drain until quiet.
    while (inflight.size > 0) {
      await Promise.allSettled([...inflight]);
      await new Promise((resolve) => setImmediate(resolve));
    }
  };
}

export interface WriteImageOptions {
  format: OutputFormat;
  /** Compressed clusters (zlib), qcow2 only. */
  compress?: boolean;
  onProgress?: (done: number, total: number) => void;
}

/**
 * Creates `output` (overwriting it) and copies the guest contents of `source` into it: no backing file, zero
 * clusters left unallocated (qcow2) or as holes (raw). The output is flushed to stable storage before this
 * returns: a snapshot is meant to outlive the host's page cache.
 */
export async function writeImage(source: BlockDevice, output: string, options: WriteImageOptions): Promise<void> {
  if (options.format === 'raw') {
    const target = await FileStorage.open(output, { create: true });
    const drain = trackCalls(target, ['write']);
    try {
      await convertToRaw(source, target, { ...(options.onProgress === undefined ? {} : { onProgress: options.onProgress }), flush: true });
    } finally {
      await drain();
      await target.close();
    }
    return;
  }
  const storage = await FileStorage.open(output, { create: true });
  try {
    await createQcow2(storage, { size: source.size });
  } finally {
    await storage.close();
  }
  const target = await openImageFile(output, { format: 'qcow2', writable: true, cache: 'writeback' });
  const drain = target instanceof Qcow2Device ? trackCalls(target, ['write', 'writeCompressed']) : async () => {};
  try {
    if (!(target instanceof Qcow2Device)) throw new Error(`internal: ${output} did not open as qcow2`);
    const compress = options.compress ? clusterCompressor('zlib', target.image.clusterSize) : undefined;
    await convertToQcow2(source, target, {
      ...(compress === undefined ? {} : { compress }),
      ...(options.onProgress === undefined ? {} : { onProgress: options.onProgress }),
    });
  } finally {
    await drain();
    await target.close();
  }
}

/** Creates an empty qcow2 `path` of `size` bytes over `backing` (or none): the delta of the mirror method. */
export async function createOverlayImage(path: string, size: number, backing: { path: string; format: string } | undefined): Promise<void> {
  const storage = await FileStorage.open(path, { create: true });
  try {
    await createQcow2(storage, { size, ...(backing === undefined ? {} : { backingFile: backing.path, backingFormat: backing.format }) });
    await storage.flush();
  } finally {
    await storage.close();
  }
}
