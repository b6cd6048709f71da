import { Qcow2Error } from '../errors.js';
import { MAX_REFCOUNT_TABLE_BYTES } from '../format/constants.js';
import { getRefcount, maxRefcount, refcountEntriesPerBlock, setRefcount } from '../format/refcount-block.js';
import { decodeRefcountTable, encodeRefcountTable } from '../format/refcount-table.js';
import { viewOf } from '../format/struct.js';
import { writeHeaderFields } from './header-rewrite.js';
import type { Qcow2Image } from './qcow2-image.js';

/**
 * The refcount structures as they are on disk, read block by block in cluster order (the walk a width change
 * makes), each block read once at a time. Clusters of the refcount table and blocks themselves are known, so a
 * rebuild can leave them out.
 */
class RefcountWalk {
  private current = -1;
  private block: DataView | undefined;

  private constructor(
    private readonly image: Qcow2Image,
    readonly table: number[],
    readonly entriesPerBlock: number,
    readonly bits: number,
    /** Clusters the refcount table and blocks occupy. */
    readonly structure: Set<number>,
  ) {}

  static async read(image: Qcow2Image): Promise<RefcountWalk> {
    const { clusterSize, refcountBits } = image.layout;
    const { refcountTableOffset, refcountTableClusters } = image.header;
    const bytes = new Uint8Array(refcountTableClusters * clusterSize);
    if (refcountTableOffset + bytes.length > image.fileSize) throw new Qcow2Error('TRUNCATED', 'refcount table lies past the end of the file', { file: image.name });
    await image.storage.read(bytes, refcountTableOffset);
    const table = withFile(image, () => decodeRefcountTable(bytes, clusterSize));
    const structure = new Set<number>();
    for (let c = 0; c < refcountTableClusters; c++) structure.add(refcountTableOffset / clusterSize + c);
    for (const offset of table) {
      if (offset + clusterSize > image.fileSize) throw new Qcow2Error('TRUNCATED', `refcount block at 0x${offset.toString(16)} lies past the end of the file`, { file: image.name });
      if (offset !== 0) structure.add(offset / clusterSize);
    }
    return new RefcountWalk(image, table, refcountEntriesPerBlock(clusterSize, refcountBits), refcountBits, structure);
  }

  /** Clusters the stored table can describe. */
  get clusters(): number {
    return this.table.length * this.entriesPerBlock;
  }

  /** Makes the block covering `cluster` current (read from the file when it is another one). */
  async load(cluster: number): Promise<void> {
    const index = Math.floor(cluster / this.entriesPerBlock);
    if (index === this.current) return;
    this.current = index;
    const offset = this.table[index] ?? 0;
    this.block = undefined;
    if (offset !== 0) {
      const bytes = new Uint8Array(this.image.clusterSize);
      await this.image.storage.read(bytes, offset);
      this.block = viewOf(bytes);
    }
  }

  /** The refcount of `cluster`, whose block must be current (see load). */
  valueOf(cluster: number): number {
    return this.block === undefined ? 0 : getRefcount(this.block, cluster % this.entriesPerBlock, this.bits);
  }
}

/** Runs `decode`, attributing a format error to the image. */
function withFile<T>(image: Qcow2Image, decode: () => T): T {
  try {
    return decode();
  } catch (error) {
    throw error instanceof Qcow2Error ? error.withFile(image.name) : error;
  }
}

/** What a refcount width change will do, decided before anything is written. */
export interface RefcountOrderPlan {
  stored: RefcountWalk;
  newBits: number;
  /** First cluster past everything in use and past the end of the file: the new structures go there. */
  start: number;
  tableClusters: number;
  blocks: number;
}

/**
 * Checks that every refcount fits `newBits` (qemu's message names the first cluster that does not) and sizes
 * the new structures. Nothing is written.
 */
export async function planRefcountOrder(image: Qcow2Image, newBits: number): Promise<RefcountOrderPlan> {
  const stored = await RefcountWalk.read(image);
  const max = maxRefcount(newBits);
  let usedEnd = 0;
  for (let index = 0; index < stored.table.length; index++) {
    if (stored.table[index] === 0) continue;
    const first = index * stored.entriesPerBlock;
    await stored.load(first);
    for (let c = first; c < first + stored.entriesPerBlock; c++) {
      const value = stored.valueOf(c);
      if (value === 0) continue;
      usedEnd = c + 1;
      if (value > max) {
        throw new Qcow2Error(
          'BAD_ARGUMENT',
          `Cannot decrease refcount entry width to ${newBits} bits: Cluster at offset 0x${(c * image.clusterSize).toString(16)} has a refcount of ${value}`,
          { file: image.name },
        );
      }
    }
  }
  const clusterSize = image.clusterSize;
  const start = Math.max(usedEnd, Math.ceil(image.fileSize / clusterSize));
  const perBlock = refcountEntriesPerBlock(clusterSize, newBits);
  let blocks = 1;
  let tableClusters = 1;
  for (;;) {
    const total = start + tableClusters + blocks;
    const neededBlocks = Math.ceil(total / perBlock);
    const neededTable = Math.ceil((neededBlocks * 8) / clusterSize);
    if (neededBlocks <= blocks && neededTable <= tableClusters) break;
    blocks = Math.max(blocks, neededBlocks);
    tableClusters = Math.max(tableClusters, neededTable);
  }
  if (tableClusters * clusterSize > MAX_REFCOUNT_TABLE_BYTES) {
    throw new Qcow2Error('REFCOUNT_TABLE_TOO_LARGE', `the refcount table for ${newBits}-bit refcounts would exceed 8 MiB`, { file: image.name });
  }
  return { stored, newBits, start, tableClusters, blocks };
}

/** Refcount blocks gathered into one write. */
const BLOCKS_PER_WRITE = 64;

/**
 * Rewrites the refcount structures with a new entry width (qemu-img amend -o refcount_bits=N), crash-safe by
 * construction: the new table and blocks are written past the end of the image, in clusters the old refcounts
 * count nowhere, and count everything in use except the old table and blocks (which nothing references once the
 * header names the new ones). Then ONE write of header bytes 48..99 (refcount table offset and size, the fields
 * between them unchanged, refcount_order) switches. Killed before that write, the image is the old one with
 * unreferenced garbage past its end; after it, the new one, clean: the old structures are simply free.
 */
export async function changeRefcountOrder(image: Qcow2Image, plan: RefcountOrderPlan, onProgress?: (done: number, total: number) => void): Promise<void> {
  const { stored, newBits, start, tableClusters, blocks } = plan;
  const clusterSize = image.clusterSize;
  const perBlock = refcountEntriesPerBlock(clusterSize, newBits);
  const tableOffset = start * clusterSize;
  const blocksStart = start + tableClusters;
  const total = start + tableClusters + blocks;

  for (let first = 0; first < blocks; first += BLOCKS_PER_WRITE) {
    const count = Math.min(BLOCKS_PER_WRITE, blocks - first);
    const bytes = new Uint8Array(count * clusterSize);
    for (let b = 0; b < count; b++) {
      const view = viewOf(bytes.subarray(b * clusterSize, (b + 1) * clusterSize));
      const from = (first + b) * perBlock;
      const to = Math.min(from + perBlock, total);
      for (let c = from; c < to; c++) {
        if (c >= start) {
          setRefcount(view, c - from, newBits, 1);
          continue;
        }
        if (c % stored.entriesPerBlock === 0 || c === from) await stored.load(c);
        const value = stored.structure.has(c) ? 0 : stored.valueOf(c);
        if (value !== 0) setRefcount(view, c - from, newBits, value);
      }
    }
    await image.storage.write(bytes, (blocksStart + first) * clusterSize);
    onProgress?.(first + count, blocks + 1);
  }
  const table = encodeRefcountTable(
    Array.from({ length: blocks }, (_, b) => (blocksStart + b) * clusterSize),
    tableClusters * clusterSize,
  );
  await image.storage.write(table, tableOffset);
  await image.storage.flush();

  // The switch: refcount_table_offset through refcount_order in one write (the snapshot fields and feature
  // words between them as they are).
  await writeHeaderFields(image.storage, image.header, { refcountTableOffset: tableOffset, refcountTableClusters: tableClusters, refcountOrder: Math.log2(newBits) });
  await image.storage.flush();
  image.fileReaches(total * clusterSize);
  onProgress?.(blocks + 1, blocks + 1);
}
