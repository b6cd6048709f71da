import { Qcow2Error } from '../errors.js';
import { getRefcount, getRefcounts, maxRefcount, refcountEntriesPerBlock, setRefcount } from '../format/refcount-block.js';
import { decodeRefcountTable, encodeRefcountTable, encodeRefcountTableEntry } from '../format/refcount-table.js';
import type { Storage } from '../io/storage.js';
import type { ImageLayout } from './image-layout.js';
import { RefcountBlockCache, type RefcountBlock } from './refcount-block-cache.js';

/** Writes the header's refcount table fields (offset and size in clusters) in one write. */
export type RefcountTableHeaderWriter = (tableOffset: number, tableClusters: number) => Promise<void>;

const CLEAN_BLOCK_CACHE_LIMIT = 256;

/**
 * The refcount table and blocks of one image: reads, updates, and cluster allocation. Updates stay in memory
 * (dirty blocks) until flush(), which the image calls before it writes any L2 or L1 change that points at the
 * clusters counted: refcount before pointer, so a crash can only leak. Structures grow self-describing: a new
 * refcount block is placed inside the range it covers and counts itself; a new table comes with the blocks that
 * count it, and the header switches to it last.
 */
export class Refcounts {
  /** Blocks read or changed; dirty ones stay until flush() (this allocator orders its own writes). */
  private readonly blocks: RefcountBlockCache;
  /** First cluster that may be free: allocation scans from here (qemu's free_cluster_index). */
  private freeHint = 0;
  /**
   * Where runs of several clusters are searched from: just past the last run allocated, or an earlier freed
   * cluster. Without it, one small free hole (an old refcount table) would make every run search rescan the file.
   */
  private runHint = 0;
  readonly entriesPerBlock: number;
  readonly max: number;

  private constructor(
    private readonly storage: Storage,
    private readonly layout: ImageLayout,
    private table: number[],
    private tableOffset: number,
    private tableClusters: number,
    private readonly writeTableHeader: RefcountTableHeaderWriter,
  ) {
    this.entriesPerBlock = refcountEntriesPerBlock(layout.clusterSize, layout.refcountBits);
    this.max = maxRefcount(layout.refcountBits);
    this.blocks = new RefcountBlockCache(storage, layout.clusterSize, CLEAN_BLOCK_CACHE_LIMIT, 'keep-dirty', (index) => this.table[index]!);
  }

  static async load(
    storage: Storage,
    layout: ImageLayout,
    tableOffset: number,
    tableClusters: number,
    writeTableHeader: RefcountTableHeaderWriter,
  ): Promise<Refcounts> {
    const bytes = new Uint8Array(tableClusters * layout.clusterSize);
    await storage.read(bytes, tableOffset);
    return new Refcounts(storage, layout, decodeRefcountTable(bytes, layout.clusterSize), tableOffset, tableClusters, writeTableHeader);
  }

  get refcountTableOffset(): number {
    return this.tableOffset;
  }
  get refcountTableClusters(): number {
    return this.tableClusters;
  }
  /** Refcount block offsets by block index (0 = none). */
  get blockOffsets(): readonly number[] {
    return this.table;
  }

  private async block(blockIndex: number): Promise<RefcountBlock | undefined> {
    const offset = this.table[blockIndex] ?? 0;
    if (offset === 0) return undefined;
    return this.blocks.get(blockIndex) ?? (await this.blocks.load(blockIndex, offset, (bytes, at) => this.storage.read(bytes, at)));
  }

  async get(cluster: number): Promise<number> {
    const block = await this.block(Math.floor(cluster / this.entriesPerBlock));
    return block === undefined ? 0 : getRefcount(block.view, cluster % this.entriesPerBlock, this.layout.refcountBits);
  }

  /** Adds `delta` to the refcount of `count` clusters from `cluster`; blocks missing for increases are created. */
  async adjust(cluster: number, count: number, delta: number): Promise<void> {
    if (delta > 0) {
      const missing = this.missingBlocks(cluster, count);
      if (missing.length > 0) {
        await this.claim(cluster, count, delta);
        return;
      }
    }
    await this.adjustExisting(cluster, count, delta);
  }

  /** Block indexes covering [cluster, cluster+count) that have no refcount block. */
  private missingBlocks(cluster: number, count: number): number[] {
    const missing: number[] = [];
    const first = Math.floor(cluster / this.entriesPerBlock);
    const last = Math.floor((cluster + count - 1) / this.entriesPerBlock);
    for (let b = first; b <= last; b++) if ((this.table[b] ?? 0) === 0) missing.push(b);
    return missing;
  }

  private async adjustExisting(cluster: number, count: number, delta: number): Promise<void> {
    const end = cluster + count;
    // One block lookup per block range, then a synchronous loop: snapshot create touches every cluster.
    for (let c = cluster; c < end; ) {
      const blockIndex = Math.floor(c / this.entriesPerBlock);
      const block = await this.block(blockIndex);
      if (block === undefined) throw new Qcow2Error('BAD_HEADER', `cluster ${c} has no refcount block`);
      const blockEnd = Math.min(end, (blockIndex + 1) * this.entriesPerBlock);
      for (; c < blockEnd; c++) {
        const index = c % this.entriesPerBlock;
        const value = getRefcount(block.view, index, this.layout.refcountBits) + delta;
        if (value < 0) throw new Qcow2Error('BAD_HEADER', `refcount of cluster ${c} would drop below zero`);
        if (value > this.max) throw new Qcow2Error('BAD_ARGUMENT', `refcount of cluster ${c} would overflow ${this.layout.refcountBits} bits`);
        setRefcount(block.view, index, this.layout.refcountBits, value);
        if (value === 0) {
          this.freeHint = Math.min(this.freeHint, c);
          this.runHint = Math.min(this.runHint, c);
        }
      }
      block.dirty = true;
    }
  }

  /** The largest refcount among clusters [cluster, cluster+count). */
  async maxInRange(cluster: number, count: number): Promise<number> {
    let max = 0;
    const end = cluster + count;
    for (let c = cluster; c < end; ) {
      const blockIndex = Math.floor(c / this.entriesPerBlock);
      const blockEnd = Math.min(end, (blockIndex + 1) * this.entriesPerBlock);
      const block = await this.block(blockIndex);
      if (block !== undefined && this.layout.refcountBits <= 32) {
        // Decoded in one synchronous loop per block (snapshot create asks this of every cluster of the image).
        const values = this.scratch(blockEnd - c);
        getRefcounts(block.view, c % this.entriesPerBlock, this.layout.refcountBits, values);
        for (let i = 0; i < values.length; i++) if (values[i]! > max) max = values[i]!;
      } else if (block !== undefined) {
        for (; c < blockEnd; c++) max = Math.max(max, getRefcount(block.view, c % this.entriesPerBlock, this.layout.refcountBits));
      }
      c = blockEnd;
    }
    return max;
  }

  private scratchValues = new Uint32Array(0);

  /** A reused array of `length` refcounts. */
  private scratch(length: number): Uint32Array {
    if (this.scratchValues.length < length) this.scratchValues = new Uint32Array(this.entriesPerBlock);
    return this.scratchValues.subarray(0, length);
  }

  /** Whether cluster `c` is free: no block for its range, or refcount 0. */
  private async isFree(c: number): Promise<boolean> {
    return (this.table[Math.floor(c / this.entriesPerBlock)] ?? 0) === 0 || (await this.get(c)) === 0;
  }

  /**
   * Index of the first run of `count` free clusters at or after the free hint. The scan also moves the free hint
   * to the first free cluster it met, since everything before that is in use (as qemu's scan does). It reads
   * each refcount block once and scans it synchronously; a range with no block is free as a whole.
   */
  private async findFree(count: number): Promise<number> {
    const from = count > 1 ? Math.max(this.freeHint, this.runHint) : this.freeHint;
    let start = from;
    let run = 0;
    let firstFree = -1;
    const found = (): number => {
      if (from === this.freeHint && firstFree >= 0) this.freeHint = firstFree;
      return start;
    };
    for (let c = from; ; ) {
      const blockIndex = Math.floor(c / this.entriesPerBlock);
      const blockEnd = (blockIndex + 1) * this.entriesPerBlock;
      const block = await this.block(blockIndex);
      if (block === undefined) {
        // The whole rest of this range is free.
        if (firstFree < 0) firstFree = c;
        if (run === 0) start = c;
        run += blockEnd - c;
        if (run >= count) return found();
        c = blockEnd;
        continue;
      }
      for (; c < blockEnd; c++) {
        if (getRefcount(block.view, c % this.entriesPerBlock, this.layout.refcountBits) !== 0) {
          run = 0;
          continue;
        }
        if (firstFree < 0) firstFree = c;
        if (run === 0) start = c;
        if (++run >= count) return found();
      }
    }
  }

  /**
   * Allocates `count` contiguous clusters with refcount 1 and returns the host offset of the first. Their
   * refcounts are in dirty blocks: flush() before writing a pointer to them.
   */
  async allocate(count: number): Promise<number> {
    const start = await this.findFree(count);
    await this.adjust(start, count, 1);
    if (start <= this.freeHint) this.freeHint = start + count;
    if (count > 1) this.runHint = start + count;
    return start * this.layout.clusterSize;
  }

  /** Drops one reference from `count` clusters at `offset` (freed clusters become allocatable again). */
  async free(offset: number, count: number): Promise<void> {
    await this.adjust(offset / this.layout.clusterSize, count, -1);
  }

  /**
   * Adds `delta` to clusters [start, start+count) where some covering refcount blocks are missing. The new
   * blocks go to the first free clusters after the run (so the run stays contiguous), and every new block
   * counts the claimed clusters and new blocks in its own range, itself included. Blocks are written before
   * the table entries that point at them.
   */
  private async claim(start: number, count: number, delta: number): Promise<void> {
    const marked = new Map<number, number>(); // cluster -> refcount to add
    for (let c = start; c < start + count; c++) marked.set(c, delta);
    const newBlocks = new Map<number, number>(); // block index -> cluster it is placed at
    let next = start + count;
    const pending = this.missingBlocks(start, count);
    while (pending.length > 0) {
      const b = pending.shift()!;
      if (newBlocks.has(b)) continue;
      while (marked.has(next) || !(await this.isFree(next))) next++;
      newBlocks.set(b, next);
      marked.set(next, 1);
      const ownBlock = Math.floor(next / this.entriesPerBlock);
      if ((this.table[ownBlock] ?? 0) === 0 && !newBlocks.has(ownBlock)) pending.push(ownBlock);
    }
    const maxBlock = Math.max(...newBlocks.keys());
    if (maxBlock >= this.table.length) {
      // The table must grow first; it may create some of these blocks itself. Then start over. The new table
      // must not land on the run being claimed, which still reads as free: search after it.
      const hint = this.freeHint;
      this.freeHint = Math.max(hint, start + count);
      await this.growTable(maxBlock);
      this.freeHint = Math.min(this.freeHint, hint);
      await this.adjust(start, count, delta);
      return;
    }
    const fresh = new Map<number, RefcountBlock>();
    for (const b of newBlocks.keys()) fresh.set(b, this.blocks.fresh());
    for (const [c, add] of marked) {
      const b = Math.floor(c / this.entriesPerBlock);
      const block = fresh.get(b);
      if (block !== undefined) setRefcount(block.view, c % this.entriesPerBlock, this.layout.refcountBits, add);
      else await this.adjustExisting(c, 1, add);
    }
    // Increases in existing blocks and the new blocks reach the file before any pointer to them.
    await this.flush();
    for (const [b, block] of fresh) await this.storage.write(block.bytes, newBlocks.get(b)! * this.layout.clusterSize);
    for (const b of this.hookOrder(newBlocks)) {
      await this.writeTableEntry(b, newBlocks.get(b)! * this.layout.clusterSize);
      this.blocks.set(b, fresh.get(b)!);
    }
  }

  /**
   * The order in which the table entries of new blocks are written: a block placed in the range of another new
   * block is counted there, so that other block's entry goes first — otherwise a crash between the two entries
   * leaves a table entry pointing at a cluster whose refcount is unreachable, i.e. 0 (a corruption; found with
   * 512-byte clusters and 64-bit refcounts, where one block covers only 64 clusters). Placement only moves
   * forward, so these dependencies form no cycle; should one ever appear, its blocks keep their index order.
   */
  private hookOrder(newBlocks: Map<number, number>): number[] {
    const order: number[] = [];
    const state = new Map<number, 'visiting' | 'done'>();
    const visit = (b: number): void => {
      if (state.has(b)) return;
      state.set(b, 'visiting');
      const countedIn = Math.floor(newBlocks.get(b)! / this.entriesPerBlock);
      if (countedIn !== b && newBlocks.has(countedIn)) visit(countedIn);
      state.set(b, 'done');
      order.push(b);
    };
    for (const b of [...newBlocks.keys()].sort((x, y) => x - y)) visit(b);
    return order;
  }

  private async writeTableEntry(blockIndex: number, offset: number): Promise<void> {
    await this.storage.write(encodeRefcountTableEntry(offset), this.tableOffset + blockIndex * 8);
    this.table[blockIndex] = offset;
  }

  /**
   * Moves the refcount table to a larger one at the first free run of clusters. The new table's clusters and any
   * new blocks that count them are counted before the header points at the table; the old table is freed last.
   */
  private async growTable(neededBlockIndex: number): Promise<void> {
    const { clusterSize } = this.layout;
    let entries = Math.max(neededBlockIndex + 1, Math.ceil(this.table.length * 1.5));
    for (;;) {
      const tableClusters = Math.ceil((entries * 8) / clusterSize);
      if (tableClusters * clusterSize > 8 * 1024 * 1024) {
        throw new Qcow2Error('REFCOUNT_TABLE_TOO_LARGE', 'the refcount table would exceed 8 MiB: image too large for this cluster size');
      }
      const tableStart = await this.findFree(tableClusters);
      // findFree only knows the blocks that exist; a table placed in a range without a block is fine (a new
      // block will count it), but the new blocks must not land on clusters already in use.
      const marked = new Set<number>();
      for (let c = tableStart; c < tableStart + tableClusters; c++) marked.add(c);
      // New blocks for every marked cluster whose range has none; each new block is marked too (fixpoint).
      const newBlocks = new Map<number, number>();
      const pending = [...marked];
      while (pending.length > 0) {
        const c = pending.pop()!;
        const b = Math.floor(c / this.entriesPerBlock);
        if ((this.table[b] ?? 0) !== 0 || newBlocks.has(b)) continue;
        // Not before the free hint: a caller claiming a run may have moved the hint past it.
        let place = Math.max(b * this.entriesPerBlock, this.freeHint);
        while (marked.has(place) || !(await this.isFree(place))) place++;
        newBlocks.set(b, place);
        marked.add(place);
        pending.push(place);
      }
      const maxBlock = Math.max(neededBlockIndex, ...newBlocks.keys());
      if (maxBlock >= entries) {
        entries = maxBlock + 1 + Math.ceil(entries / 2);
        continue;
      }
      // 1. New blocks, each counting the marked clusters in its range.
      const fresh = new Map<number, RefcountBlock>();
      for (const b of newBlocks.keys()) fresh.set(b, this.blocks.fresh());
      for (const c of marked) {
        const b = Math.floor(c / this.entriesPerBlock);
        const block = fresh.get(b);
        if (block !== undefined) setRefcount(block.view, c % this.entriesPerBlock, this.layout.refcountBits, 1);
        else await this.adjustExisting(c, 1, 1);
      }
      for (const [b, block] of fresh) await this.storage.write(block.bytes, newBlocks.get(b)! * clusterSize);
      await this.flush();
      // 2. The new table: old entries plus the new blocks.
      const table = [...this.table];
      while (table.length < tableClusters * (clusterSize / 8)) table.push(0);
      for (const [b, place] of newBlocks) table[b] = place * clusterSize;
      const tableBytes = encodeRefcountTable(table, tableClusters * clusterSize);
      const newTableOffset = tableStart * clusterSize;
      await this.storage.write(tableBytes, newTableOffset);
      await this.storage.flush();
      // 3. Switch the header, then free the old table.
      await this.writeTableHeader(newTableOffset, tableClusters);
      const oldOffset = this.tableOffset;
      const oldClusters = this.tableClusters;
      this.table = table;
      this.tableOffset = newTableOffset;
      this.tableClusters = tableClusters;
      for (const [b, block] of fresh) this.blocks.set(b, block);
      await this.free(oldOffset, oldClusters);
      return;
    }
  }

  /** Writes every dirty refcount block. */
  async flush(): Promise<void> {
    await this.blocks.flush();
  }

  /**
   * Takes the refcount table a metadata switch (metadata-switch.ts) put in place, and forgets the blocks cached
   * from the old one.
   */
  adopt(tableOffset: number, tableClusters: number, table: number[]): void {
    if (this.hasDirtyBlocks) throw new Error('refcount table replaced under dirty refcount blocks');
    this.table = table;
    this.tableOffset = tableOffset;
    this.tableClusters = tableClusters;
    this.blocks.clear();
    this.freeHint = 0;
    this.runHint = 0;
  }

  get hasDirtyBlocks(): boolean {
    return this.blocks.hasDirtyBlocks;
  }
}
