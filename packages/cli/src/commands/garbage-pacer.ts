import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

type Progress = (done: number, total: number) => void;

/** Guest bytes between two collections: about the garbage a compressing convert makes in that span. */
const COLLECT_EVERY = 4 * 1024 * 1024;

/**
 * Compressing converts make garbage outside V8's heap as fast as they copy: each zlib call's output buffer, each
 * zstd batch's streams once stored. V8 frees such buffers when it collects the objects holding them, and so
 * little JavaScript runs per chunk that its young generation fills slowly: tens of MiB of dead buffers piled up
 * between two collections (convert -c: 113 MiB peak RSS with zlib, 101 with zstd; issue 10 bounds it at 100).
 * This wraps a progress callback so that a young-generation collection runs every COLLECT_EVERY bytes of progress:
 * the garbage stays about what is in flight, and each collection costs a fraction of a millisecond, since almost
 * nothing in that generation is alive. Where gc() cannot be reached, the callback is returned as it is.
 */
export function collectingGarbage(onProgress: Progress): Progress {
  const collect = youngGenerationCollector();
  if (collect === undefined) return onProgress;
  let next = COLLECT_EVERY;
  return (done, total) => {
    if (done >= next) {
      collect();
      next = done + COLLECT_EVERY;
    }
    onProgress(done, total);
  };
}

function youngGenerationCollector(): (() => void) | undefined {
  try {
    // V8's gc() made reachable without starting node with --expose-gc: a context created after the flag has it.
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as unknown;
    return typeof gc === 'function' ? () => (gc as (options: { type: 'minor' }) => void)({ type: 'minor' }) : undefined;
  } catch {
    return undefined;
  }
}
