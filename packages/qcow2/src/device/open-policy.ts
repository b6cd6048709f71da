import { Qcow2Error } from '../errors.js';
import type { FileReference, ReferenceGate } from './host-files.js';

/** qemu-img's behaviour: follow every reference the image makes. */
export const trustingGate: ReferenceGate = () => {};

/**
 * For images a guest (or anyone untrusted) wrote: an image may name any host file as its backing or data file
 * (CVE-2024-32498), so refuse every reference before touching the other file.
 */
export const untrustedGate: ReferenceGate = (reference: FileReference) => {
  const what = { backing: 'backing file', 'data-file': 'external data file', extent: 'extent file' }[reference.kind];
  throw new Qcow2Error(
    'UNTRUSTED_REFERENCE',
    `image names ${what} '${reference.name}'; refused for an untrusted image (convert it without --untrusted only if you trust it)`,
    { file: reference.from },
  );
};

/** The deepest backing chain opened; deeper chains are refused rather than recursed into. */
export const DEFAULT_MAX_CHAIN_DEPTH = 64;
