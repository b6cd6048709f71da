import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

type Collect = (options: { type: 'minor' | 'major' }) => void;

/**
 * Compressing converts make garbage outside V8's heap at the speed of the copy: each zlib call's output buffer,
 * each zstd batch's streams once stored. V8 frees such buffers when it collects the objects holding them, and so
 * little JavaScript runs between two chunks that its young generation fills slowly: tens of MiB of dead buffers
 * piled up before a collection (convert -c: 113 MiB peak RSS with zlib, 101 with zstd; issue 10 bounds it at 100).
 * A young-generation collection every `intervalMs` keeps them to about what is in flight; each costs well under a
 * millisecond, since almost nothing in that generation is alive. Returns the function that stops it.
 */
export function paceGarbageCollection(intervalMs = 50): () => void {
  let collect: Collect;
  try {
    // V8's gc() made reachable without starting node with --expose-gc: a context created after the flag has it.
    setFlagsFromString('--expose-gc');
    collect = runInNewContext('gc') as Collect;
  } catch {
    return () => {};
  }
  if (typeof collect !== 'function') return () => {};
  const timer = setInterval(() => collect({ type: 'minor' }), intervalMs);
  timer.unref();
  return () => clearInterval(timer);
}
