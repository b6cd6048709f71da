import { viewOf } from '../format/struct.js';
import type { Storage } from '../io/storage.js';

/** One refcount block in memory; `dirty` until it is written back. */
export interface RefcountBlock {
  bytes: Uint8Array;
  view: DataView;
  dirty: boolean;
}

/** How a cache makes room: `keep-dirty` never writes a block on its own (the owner orders its writes). */
export type DirtyEviction = 'keep-dirty' | 'write-back';

/**
 * The refcount blocks of one image held in memory, by block index, for every reader and writer of refcounts:
 * the allocator (refcounts.ts) and the check and repair (stored-refcounts.ts). Blocks are read whole, kept up to
 * `limit`, and written back by flush() to where `offsetOf` says. When full, the oldest blocks make room: clean
 * ones are dropped; dirty ones are written first with `write-back`, kept with `keep-dirty` (the allocator's
 * dirty blocks must reach the file at the moment its ordering rule says, never earlier).
 */
export class RefcountBlockCache {
  private readonly blocks = new Map<number, RefcountBlock>();

  constructor(
    private readonly storage: Storage,
    private readonly clusterSize: number,
    private readonly limit: number,
    private readonly eviction: DirtyEviction,
    private readonly offsetOf: (index: number) => number,
  ) {}

  /** The block of `index` when it is in memory. */
  get(index: number): RefcountBlock | undefined {
    return this.blocks.get(index);
  }

  /**
   * Reads block `index` from `offset` with `read` (a strict read, or one that pads past the end of the file with
   * zeros), after making room, and keeps it.
   */
  async load(index: number, offset: number, read: (bytes: Uint8Array, offset: number) => Promise<unknown>): Promise<RefcountBlock> {
    const bytes = new Uint8Array(this.clusterSize);
    await this.makeRoom();
    await read(bytes, offset);
    const block = { bytes, view: viewOf(bytes), dirty: false };
    this.blocks.set(index, block);
    return block;
  }

  /** Keeps `block` as block `index` (a new block, or one placed by a table switch). */
  set(index: number, block: RefcountBlock): void {
    this.blocks.set(index, block);
  }

  /** A new, zeroed block (not kept yet). */
  fresh(): RefcountBlock {
    const bytes = new Uint8Array(this.clusterSize);
    return { bytes, view: viewOf(bytes), dirty: false };
  }

  private async makeRoom(): Promise<void> {
    if (this.blocks.size < this.limit) return;
    for (const [index, block] of this.blocks) {
      if (block.dirty) {
        if (this.eviction === 'keep-dirty') continue;
        await this.writeBlock(index, block);
      }
      this.blocks.delete(index);
      if (this.blocks.size < this.limit) return;
    }
  }

  private async writeBlock(index: number, block: RefcountBlock): Promise<void> {
    await this.storage.write(block.bytes, this.offsetOf(index));
    block.dirty = false;
  }

  /** Writes every dirty block back. */
  async flush(): Promise<void> {
    for (const [index, block] of this.blocks) if (block.dirty) await this.writeBlock(index, block);
  }

  get hasDirtyBlocks(): boolean {
    for (const block of this.blocks.values()) if (block.dirty) return true;
    return false;
  }

  /** Forgets every block (the table they belong to was replaced). */
  clear(): void {
    this.blocks.clear();
  }
}
