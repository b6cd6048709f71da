/**
 * Test images for benchmarks, built with qemu-img and qemu-io from deterministic data, cached under
 * os.tmpdir()/qcowkit-bench/images and reused while their parameters stay the same: the file name carries a
 * hash of the maker's name, version and parameters. `cleanImageCache` deletes them (run.ts --clean).
 */
import { createHash } from 'node:crypto';
import { closeSync, existsSync, ftruncateSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Prng, pseudoText, randomBytesAt } from './prng.js';
import { runTool } from './process.js';
import { formatBytes } from './stats.js';

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;

export function benchTempDir(): string {
  return join(tmpdir(), 'qcowkit-bench');
}

export function imageCacheDir(): string {
  return join(benchTempDir(), 'images');
}

/** A recipe for one image. `version` is bumped whenever `build` changes what it produces. */
export interface ImageMaker<P> {
  name: string;
  version: number;
  params: P;
  /** Builds the image at `path` (which does not exist yet) and returns facts about it for the report. */
  build(path: string, params: P, log: (line: string) => void): ImageFacts;
}

/** What an image holds, for the report: free-form lines plus the numbers benchmarks may use. */
export interface ImageFacts {
  description: string;
  virtualSize: number;
  /** Composition as `qemu-img map --output=json` sees it: bytes of data, zero (allocated or flagged) and unallocated. */
  qemuMap: { data: number; zero: number; unallocated: number; entries: number };
  details: string[];
}

export interface BuiltImage {
  name: string;
  key: string;
  path: string;
  /** The file's size on disk (st_size). */
  fileSize: number;
  reused: boolean;
  buildMs: number;
  facts: ImageFacts;
}

export function makerKey(maker: ImageMaker<unknown>): string {
  return createHash('sha256')
    .update(JSON.stringify({ name: maker.name, version: maker.version, params: maker.params }))
    .digest('hex')
    .slice(0, 12);
}

/** The image for `maker`: reused from the cache when its sidecar says it was built completely, else built now. */
export function ensureImage<P>(maker: ImageMaker<P>, log: (line: string) => void): BuiltImage {
  const dir = imageCacheDir();
  mkdirSync(dir, { recursive: true });
  const key = makerKey(maker as ImageMaker<unknown>);
  const path = join(dir, `${maker.name}-${key}.qcow2`);
  const sidecar = `${path}.json`;
  if (existsSync(path) && existsSync(sidecar)) {
    const saved = JSON.parse(readFileSync(sidecar, 'utf8')) as { facts: ImageFacts; buildMs: number };
    return { name: maker.name, key, path, fileSize: statSync(path).size, reused: true, buildMs: saved.buildMs, facts: saved.facts };
  }
  const building = join(dir, `${maker.name}-${key}.building-${process.pid}.qcow2`);
  rmSync(building, { force: true });
  log(`  building image ${maker.name} (${key}) ...`);
  const start = Date.now();
  let facts: ImageFacts;
  try {
    facts = maker.build(building, maker.params, log);
    runTool(['qemu-img', 'check', '-q', building]);
  } catch (error) {
    rmSync(building, { force: true });
    throw error;
  }
  renameSync(building, path);
  const buildMs = Date.now() - start;
  writeFileSync(sidecar, `${JSON.stringify({ name: maker.name, key, params: maker.params, buildMs, facts }, null, 2)}\n`);
  log(`  built ${path} in ${(buildMs / 1000).toFixed(1)} s`);
  return { name: maker.name, key, path, fileSize: statSync(path).size, reused: false, buildMs, facts };
}

/** Deletes every cached image (and any leftover work files); returns what was removed. */
export function cleanImageCache(): string[] {
  const dir = benchTempDir();
  if (!existsSync(dir)) return [];
  rmSync(dir, { recursive: true, force: true });
  return [dir];
}

/** Runs qemu-io commands against `path`, a few hundred per process. */
export function qemuIo(path: string, commands: readonly string[], format = 'qcow2'): void {
  const batch = 300;
  for (let i = 0; i < commands.length; i += batch) {
    runTool(['qemu-io', '-f', format, ...commands.slice(i, i + batch).flatMap((c) => ['-c', c]), path]);
  }
}

interface QemuMapEntry {
  start: number;
  length: number;
  present: boolean;
  zero: boolean;
  data: boolean;
}

export function qemuMapComposition(path: string): ImageFacts['qemuMap'] {
  const entries = JSON.parse(runTool(['qemu-img', 'map', '--output=json', path])) as QemuMapEntry[];
  const out = { data: 0, zero: 0, unallocated: 0, entries: entries.length };
  for (const e of entries) {
    if (!e.present) out.unallocated += e.length;
    else if (e.data && !e.zero) out.data += e.length;
    else out.zero += e.length;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// Mixed-content image: the convert-raw benchmark's image.

/**
 * random:       incompressible data (written through a raw file and qemu-img convert, so every segment differs)
 * zero-flag:    `write -z` over unallocated clusters: L2 zero flag, no host cluster
 * zero-alloc:   random data first, then `write -z` over it: L2 zero flag keeping its host cluster
 * literal-zero: `write -P 0`: ordinary data clusters whose bytes are all zero
 * compressed:   `write -c -s TEXTFILE`: compressed clusters holding text-like data
 * hole:         never written: unallocated
 */
export type SegmentKind = 'random' | 'zero-flag' | 'zero-alloc' | 'literal-zero' | 'compressed' | 'hole';

export interface MixedParams {
  virtualSize: number;
  clusterSize: number;
  seed: number;
  /** Segment lengths are log-uniform between these (whole clusters). */
  minSegment: number;
  maxSegment: number;
  /** Target share of each kind (weights; the actual shares are reported). */
  shares: Partial<Record<SegmentKind, number>>;
}

export interface Segment {
  offset: number;
  length: number;
  kind: SegmentKind;
}

export function mixedLayout(p: MixedParams): Segment[] {
  const rng = new Prng(p.seed);
  const minClusters = p.minSegment / p.clusterSize;
  const maxClusters = p.maxSegment / p.clusterSize;
  const weights = Object.fromEntries(Object.entries(p.shares).filter(([, w]) => (w ?? 0) > 0)) as Record<SegmentKind, number>;
  const out: Segment[] = [];
  for (let offset = 0; offset < p.virtualSize; ) {
    const clusters = Math.round(minClusters * Math.pow(maxClusters / minClusters, rng.next()));
    const length = Math.min(clusters * p.clusterSize, p.virtualSize - offset);
    out.push({ offset, length, kind: rng.pick(weights) });
    offset += length;
  }
  return out;
}

export function layoutShares(layout: readonly Segment[]): Record<SegmentKind, number> {
  const bytes: Record<SegmentKind, number> = { random: 0, 'zero-flag': 0, 'zero-alloc': 0, 'literal-zero': 0, compressed: 0, hole: 0 };
  for (const seg of layout) bytes[seg.kind] += seg.length;
  return bytes;
}

export function mixedImage(name: string, params: MixedParams): ImageMaker<MixedParams> {
  return { name, version: 2, params, build: buildMixed };
}

function buildMixed(path: string, p: MixedParams, log: (line: string) => void): ImageFacts {
  const layout = mixedLayout(p);
  // 1. Incompressible data through a sparse raw file: qemu-img convert allocates exactly the written segments.
  const raw = `${path}.raw`;
  const fd = openSync(raw, 'w');
  try {
    ftruncateSync(fd, p.virtualSize);
    const buffer = new Uint8Array(p.maxSegment);
    for (const seg of layout) {
      if (seg.kind !== 'random' && seg.kind !== 'zero-alloc') continue;
      const chunk = buffer.subarray(0, seg.length);
      randomBytesAt(String(p.seed), seg.offset, chunk);
      writeSync(fd, chunk, 0, chunk.length, seg.offset);
    }
  } finally {
    closeSync(fd);
  }
  log('    qemu-img convert raw -> qcow2 ...');
  try {
    runTool(['qemu-img', 'convert', '-q', '-f', 'raw', '-O', 'qcow2', '-o', `cluster_size=${p.clusterSize},compat=1.1`, raw, path]);
  } finally {
    rmSync(raw, { force: true });
  }
  // 2. Zeros and compressed clusters with qemu-io.
  const text = `${path}.text`;
  writeFileSync(text, pseudoText(p.seed, p.maxSegment));
  const commands: string[] = [];
  for (const seg of layout) {
    if (seg.kind === 'zero-flag' || seg.kind === 'zero-alloc') commands.push(`write -q -z ${seg.offset} ${seg.length}`);
    else if (seg.kind === 'literal-zero') commands.push(`write -q -P 0 ${seg.offset} ${seg.length}`);
    else if (seg.kind === 'compressed') {
      // One cluster per command: qemu compresses the clusters of one request in parallel threads and places
      // them in completion order, which would make the file layout (not the guest content) vary between builds.
      for (let at = 0; at < seg.length; at += p.clusterSize) commands.push(`write -q -c -s ${text} ${seg.offset + at} ${p.clusterSize}`);
    }
  }
  log(`    qemu-io: ${commands.length} writes ...`);
  try {
    qemuIo(path, commands);
  } finally {
    rmSync(text, { force: true });
  }
  const shares = layoutShares(layout);
  const pct = (n: number): string => `${((100 * n) / p.virtualSize).toFixed(1)}%`;
  const details = (Object.entries(shares) as [SegmentKind, number][])
    .filter(([, n]) => n > 0)
    .map(([kind, n]) => `${kind} ${pct(n)}`);
  return {
    description: `${formatBytes(p.virtualSize)} virtual, mixed content: ${layout.length} segments of ${formatBytes(p.minSegment)}..${formatBytes(p.maxSegment)}, cluster ${formatBytes(p.clusterSize)}, seed ${p.seed}`,
    virtualSize: p.virtualSize,
    qemuMap: qemuMapComposition(path),
    details: [`layout: ${details.join(', ')}`],
  };
}

// ---------------------------------------------------------------------------------------------------------
// Large sparse image: a few small written regions in a big virtual disk (the map benchmark).

export interface SparseParams {
  virtualSize: number;
  clusterSize: number;
  /** Regions written with `write -P pattern`. */
  regions: { offset: number; length: number; pattern: number }[];
}

export function sparseImage(name: string, params: SparseParams): ImageMaker<SparseParams> {
  return { name, version: 1, params, build: buildSparse };
}

function buildSparse(path: string, p: SparseParams): ImageFacts {
  runTool(['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', `cluster_size=${p.clusterSize},compat=1.1`, path, String(p.virtualSize)]);
  qemuIo(path, p.regions.map((r) => `write -q -P ${r.pattern} ${r.offset} ${r.length}`));
  return {
    description: `${formatBytes(p.virtualSize)} virtual, ${p.regions.length} written regions (${p.regions.map((r) => `${formatBytes(r.length)} at ${formatBytes(r.offset)}`).join(', ')}), cluster ${formatBytes(p.clusterSize)}`,
    virtualSize: p.virtualSize,
    qemuMap: qemuMapComposition(path),
    details: [],
  };
}
