/**
 * chain: the tree of who backs whom among a set of image files — root bases, overlays, branches (a base with
 * several overlays), active leaves — each with its virtual size, the space its file takes and its internal
 * snapshots, and the faults of the references between them.
 *
 * Reading untrusted images safely. Every file is opened read-only and only its header, extensions and snapshot
 * table are read (never guest data, never an external data file). The files opened are the ones the caller
 * lists (what it found in the paths the user gave) plus, one step out, the files those name as backing files —
 * never what a file outside the listed set names in turn, and never a file named by an absolute path outside
 * the given paths (that reference is flagged instead: an image can name any host file, CVE-2024-32498).
 * Formats come from each file's magic, not its name or what another image claims.
 */
import type { HostFiles } from '../device/host-files.js';
import { isAbsolutePath } from '../device/paths.js';
import { Qcow2Image } from '../engine/qcow2-image.js';
import { Qcow2Error } from '../errors.js';
import { QCOW2_MAGIC } from '../format/constants.js';
import type { Storage } from '../io/storage.js';
import { fullBackingFilename } from './backing-names.js';

/** The kinds of chain problems. */
export type ChainProblemCode =
  /** The backing file named cannot be found. */
  | 'BACKING_MISSING'
  /** The backing format extension names a format the backing file does not have (qcow2 vs raw). */
  | 'BACKING_FORMAT_MISMATCH'
  /** No backing format extension: qemu would probe the backing file's format, a known attack. */
  | 'BACKING_FORMAT_UNSET'
  /** The overlay's virtual size differs from its backing file's. */
  | 'SIZE_MISMATCH'
  /** The backing references form a loop. */
  | 'BACKING_LOOP'
  /** The backing file is named by an absolute path outside the given paths (not opened). */
  | 'BACKING_OUTSIDE'
  /** The file looks like qcow2 but its header could not be read. */
  | 'UNREADABLE';

/** Something wrong with an image of a chain tree (missing backing file, loop, size mismatch…). */
export interface ChainProblem {
  code: ChainProblemCode;
  severity: 'error' | 'warning';
  message: string;
}

/** An internal snapshot listed in a chain tree. */
export interface ChainSnapshot {
  id: string;
  name: string;
}

/** An image's place in a chain tree. */
export type ChainRole = 'base' | 'overlay' | 'active' | 'standalone' | 'missing' | 'not-opened';

/** One image of a chain tree, with its role, overlays and problems. */
export interface ChainImage {
  /** The name the image was found under (listed), or its resolved name (named by another image). */
  filename: string;
  /** Its canonical path (the key other images refer to it by). */
  identity: string;
  /** From the file's magic; undefined when the file was not opened. */
  format?: 'qcow2' | 'raw';
  virtualSize?: number;
  /** Bytes the file occupies on its host (allocated blocks), when known. */
  actualSize?: number;
  clusterSize?: number;
  snapshots: ChainSnapshot[];
  /** The backing file name exactly as stored, and its format extension. */
  backingFilename?: string;
  backingFormat?: string;
  /** The backing file name resolved against the image's directory. */
  fullBackingFilename?: string;
  /** Identity of the image this one is an overlay of, when that image is in the tree. */
  backing?: string;
  /** Identities of the images that are overlays of this one. */
  overlays: string[];
  /** Found in the given paths (true), or only named by an image found there. */
  listed: boolean;
  role: ChainRole;
  problems: ChainProblem[];
}

/** The backing relations among a set of images, as trees from their bases. */
export interface ChainTree {
  images: ChainImage[];
  /** Identities of the images drawn at the top level: bases, images whose backing is missing, loops. */
  roots: string[];
}

/** Options of buildChainTree. */
export interface ChainTreeOptions {
  /** Opens files read-only. A host should refuse anything that is not a regular file (FIFOs, devices). */
  hostFiles: HostFiles;
  /** Whether a canonical path lies inside the paths the user gave (references outside are flagged). */
  inScope: (identity: string) => boolean;
}

function hasProtocol(name: string): boolean {
  const stop = name.search(/[:/]/);
  return stop !== -1 && name[stop] === ':';
}

async function identityOf(hostFiles: HostFiles, name: string): Promise<string> {
  return (await hostFiles.canonical?.(name)) ?? name;
}

/** Stands in for an external data file: the tree never reads guest data. */
function unopenedDataFile(name: string): Storage {
  const refuse = (): Promise<never> => Promise.reject(new Qcow2Error('DATA_FILE_NOT_FOUND', 'external data files are not opened', { file: name }));
  return { name, read: refuse, write: refuse, size: refuse, truncate: refuse, flush: async () => {}, close: async () => {} };
}

interface Probed {
  isQcow2: boolean;
  image?: ChainImage;
}

/** Opens `filename` read-only and describes it; undefined `image` for a non-qcow2 file when `rawIfNotQcow2` is off. */
async function describe(filename: string, identity: string, listed: boolean, hostFiles: HostFiles, rawIfNotQcow2: boolean): Promise<Probed> {
  const storage = await hostFiles.open(filename, { writable: false });
  try {
    const magic = new Uint8Array(4);
    const isQcow2 = (await storage.read(magic, 0)) === 4 && new DataView(magic.buffer).getUint32(0) === QCOW2_MAGIC;
    const actualSize = storage.allocatedSize === undefined ? undefined : await storage.allocatedSize().catch(() => undefined);
    const base: ChainImage = { filename, identity, snapshots: [], overlays: [], listed, role: 'standalone', problems: [] };
    if (actualSize !== undefined) base.actualSize = actualSize;
    if (!isQcow2) {
      if (!rawIfNotQcow2) return { isQcow2 };
      return { isQcow2, image: { ...base, format: 'raw', virtualSize: await storage.size() } };
    }
    let image: Qcow2Image;
    try {
      image = await Qcow2Image.open(storage, { metadataOnly: true, openDataFile: async (name) => unopenedDataFile(name ?? filename) });
    } catch (error) {
      base.format = 'qcow2';
      base.problems.push({ code: 'UNREADABLE', severity: 'error', message: `cannot read the qcow2 header: ${(error as Error).message}` });
      return { isQcow2, image: base };
    }
    const described: ChainImage = {
      ...base,
      format: 'qcow2',
      virtualSize: image.virtualSize,
      clusterSize: image.clusterSize,
      snapshots: image.snapshots.map((s) => ({ id: s.id, name: s.name })),
    };
    const backingName = image.backingFile;
    if (backingName !== undefined && backingName !== '') {
      described.backingFilename = backingName;
      described.fullBackingFilename = fullBackingFilename(filename, backingName);
      const format = image.backingFormat;
      if (format !== undefined && format !== '') described.backingFormat = format;
    }
    return { isQcow2, image: described };
  } finally {
    await storage.close().catch(() => {});
  }
}

function isNotFound(error: unknown): boolean {
  return error instanceof Qcow2Error && error.missing;
}

/**
 * Builds the tree from `files` (the candidates found in the given paths; those without the qcow2 magic are left
 * out unless a qcow2 image names them as its backing file).
 */
export async function buildChainTree(files: string[], options: ChainTreeOptions): Promise<ChainTree> {
  const { hostFiles } = options;
  const byIdentity = new Map<string, ChainImage>();
  /** Listed files that are not qcow2: raw candidates, described only when something names them. */
  const listedOthers = new Map<string, string>();

  for (const filename of files) {
    const identity = await identityOf(hostFiles, filename);
    if (byIdentity.has(identity) || listedOthers.has(identity)) continue;
    let probed: Probed;
    try {
      probed = await describe(filename, identity, true, hostFiles, false);
    } catch (error) {
      // Listed but unreadable (permissions, vanished): shown, flagged, not guessed at.
      const problem: ChainProblem = { code: 'UNREADABLE', severity: 'error', message: `cannot be read: ${(error as Error).message}` };
      byIdentity.set(identity, { filename, identity, snapshots: [], overlays: [], listed: true, role: 'standalone', problems: [problem] });
      continue;
    }
    if (probed.image !== undefined) byIdentity.set(identity, probed.image);
    else listedOthers.set(identity, filename);
  }

  // One step out: what the listed images name. The overlays are the listed qcow2 images only.
  const missingWhy = new Map<string, string>();
  const overlays = [...byIdentity.values()].filter((image) => image.listed && image.fullBackingFilename !== undefined);
  for (const overlay of overlays) {
    const resolved = overlay.fullBackingFilename!;
    const stored = overlay.backingFilename!;
    if (hasProtocol(resolved)) {
      overlay.problems.push({ code: 'BACKING_OUTSIDE', severity: 'error', message: `backing file '${stored}' names a protocol; not opened` });
      continue;
    }
    const identity = await identityOf(hostFiles, resolved);
    const outside = isAbsolutePath(stored) && !options.inScope(identity);
    let parent = byIdentity.get(identity);
    if (parent === undefined) {
      if (outside) {
        parent = { filename: resolved, identity, snapshots: [], overlays: [], listed: false, role: 'not-opened', problems: [] };
      } else {
        try {
          const listedName = listedOthers.get(identity);
          parent = (await describe(listedName ?? resolved, identity, listedName !== undefined, hostFiles, true)).image!;
        } catch (error) {
          parent = { filename: resolved, identity, snapshots: [], overlays: [], listed: false, role: 'missing', problems: [] };
          missingWhy.set(identity, isNotFound(error) ? 'not found' : `cannot be opened: ${(error as Error).message}`);
        }
      }
      byIdentity.set(identity, parent);
    }
    if (parent.role === 'missing') {
      overlay.problems.push({ code: 'BACKING_MISSING', severity: 'error', message: `backing file '${stored}' (${resolved}) ${missingWhy.get(identity) ?? 'not found'}` });
    }
    if (outside) {
      overlay.problems.push({
        code: 'BACKING_OUTSIDE',
        severity: 'error',
        message:
          parent.role === 'not-opened'
            ? `backing file is the absolute path '${stored}', outside the given paths; not opened (an image can name any host file)`
            : `backing file is the absolute path '${stored}', outside the given paths`,
      });
    }
    overlay.backing = identity;
    parent.overlays.push(overlay.identity);
  }

  // Faults of each reference, now that both ends are known.
  for (const overlay of byIdentity.values()) {
    if (overlay.backing === undefined) continue;
    const parent = byIdentity.get(overlay.backing)!;
    if (parent.format === undefined) continue; // missing or not opened: said already
    if (overlay.backingFormat === undefined) {
      overlay.problems.push({
        code: 'BACKING_FORMAT_UNSET',
        severity: 'warning',
        message: `no backing format recorded: qemu would probe '${overlay.backingFilename}' (it is ${parent.format}); set it with rebase -u -F ${parent.format}`,
      });
    } else if (overlay.backingFormat !== parent.format) {
      overlay.problems.push({
        code: 'BACKING_FORMAT_MISMATCH',
        severity: 'error',
        message: `backing format says ${overlay.backingFormat} but '${overlay.backingFilename}' is ${parent.format}`,
      });
    }
    if (overlay.virtualSize !== undefined && parent.virtualSize !== undefined && overlay.virtualSize !== parent.virtualSize) {
      const larger = overlay.virtualSize > parent.virtualSize;
      overlay.problems.push({
        code: 'SIZE_MISMATCH',
        severity: 'warning',
        message: larger
          ? `overlay (${overlay.virtualSize} bytes) is larger than its backing file (${parent.virtualSize} bytes): reads zeros past the backing file's end`
          : `overlay (${overlay.virtualSize} bytes) is smaller than its backing file (${parent.virtualSize} bytes)`,
      });
    }
  }

  // Loops: follow backing pointers; a walk that meets itself marks the cycle.
  const state = new Map<string, 'walking' | 'done'>();
  const inLoop = new Set<string>();
  for (const start of byIdentity.keys()) {
    const path: string[] = [];
    let at: string | undefined = start;
    while (at !== undefined && state.get(at) === undefined) {
      state.set(at, 'walking');
      path.push(at);
      at = byIdentity.get(at)!.backing;
    }
    if (at !== undefined && state.get(at) === 'walking') {
      const cycle = path.slice(path.indexOf(at));
      const names = [...cycle, at].map((id) => byIdentity.get(id)!.filename).join(' -> ');
      for (const id of cycle) {
        inLoop.add(id);
        byIdentity.get(id)!.problems.push({ code: 'BACKING_LOOP', severity: 'error', message: `backing chain loops: ${names}` });
      }
    }
    for (const id of path) state.set(id, 'done');
  }

  for (const image of byIdentity.values()) {
    image.overlays.sort((a, b) => compareNames(byIdentity.get(a)!.filename, byIdentity.get(b)!.filename));
    if (image.role === 'missing' || image.role === 'not-opened') continue;
    const hasBacking = image.backing !== undefined || image.backingFilename !== undefined;
    if (!hasBacking) image.role = image.overlays.length > 0 ? 'base' : 'standalone';
    else image.role = image.overlays.length > 0 ? 'overlay' : 'active';
  }

  const images = [...byIdentity.values()].sort((a, b) => compareNames(a.filename, b.filename));
  const roots: string[] = images.filter((image) => image.backing === undefined).map((image) => image.identity);
  // A loop has no root: draw it from its first member by name.
  const drawn = new Set<string>();
  const mark = (id: string): void => {
    if (drawn.has(id)) return;
    drawn.add(id);
    for (const child of byIdentity.get(id)!.overlays) mark(child);
  };
  for (const root of roots) mark(root);
  for (const image of images) {
    if (drawn.has(image.identity) || !inLoop.has(image.identity)) continue;
    roots.push(image.identity);
    mark(image.identity);
  }
  return { images, roots };
}

function compareNames(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
