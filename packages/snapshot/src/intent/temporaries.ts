/**
 * Names of the files a run makes beside its outputs, recognisable without the intent log: a temporary overlay
 * the guest may be writing to (NAME.qcowkit-overlay-RANDOM.qcow2), a mirror destination
 * (NAME.qcowkit-delta-RANDOM.qcow2) and an output being written (NAME.qcowkit-partial-RANDOM). `vm recover`
 * finds a guest left on such an overlay, or a copy job into such a delta, from libvirt alone.
 */
import { randomBytes } from 'node:crypto';
import { basename, dirname, join } from 'node:path';

export type TemporaryKind = 'overlay' | 'delta' | 'partial';

const PATTERN = /\.qcowkit-(overlay|delta|partial)-[0-9a-f]{12}(\.qcow2)?$/;

/** A fresh name for a temporary file of `kind` for the output `output`, in `dir` (default: the output's directory). */
export function temporaryPath(output: string, kind: TemporaryKind, dir: string = dirname(output)): string {
  const random = randomBytes(6).toString('hex');
  return join(dir, `${basename(output)}.qcowkit-${kind}-${random}${kind === 'partial' ? '' : '.qcow2'}`);
}

/** The kind of qcowkit temporary file `path` names, if it names one. */
export function temporaryKind(path: string | undefined): TemporaryKind | undefined {
  if (path === undefined) return undefined;
  const match = PATTERN.exec(basename(path));
  return match === null ? undefined : (match[1] as TemporaryKind);
}
