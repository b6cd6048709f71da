/**
 * A bounded cache of aligned blocks of a remote file, for the many small reads qcow2 metadata needs (header,
 * L1, L2 and refcount tables): each block is fetched once, a read that misses several adjacent blocks fetches
 * them in one request, and concurrent reads of a block share its request. Least recently used blocks go first.
 */
export class BlockCache {
  /** Blocks by index; Map order is use order (a hit moves the block to the end). */
  private readonly blocks = new Map<number, Promise<Uint8Array>>();

  constructor(
    private readonly blockSize: number,
    private readonly maxBytes: number,
    private readonly fetchRange: (offset: number, size: number) => Promise<Uint8Array>,
  ) {}

  /** Seeds the cache with a block already fetched (the first one, when a storage opens). */
  put(offset: number, bytes: Uint8Array): void {
    this.remember(Math.floor(offset / this.blockSize), Promise.resolve(bytes));
  }

  /** Fills `dest` from [offset, offset+dest.length), which lies inside a file of `fileSize` bytes. */
  async read(dest: Uint8Array, offset: number, fileSize: number): Promise<void> {
    const first = Math.floor(offset / this.blockSize);
    const last = Math.floor((offset + dest.length - 1) / this.blockSize);
    const pending: Array<Promise<Uint8Array>> = [];
    let runStart = -1;
    const flushRun = (end: number): void => {
      if (runStart < 0) return;
      const start = runStart * this.blockSize;
      const size = Math.min(end * this.blockSize, fileSize) - start;
      const run = this.fetchRange(start, size);
      for (let index = runStart; index < end; index++) {
        const from = (index - runStart) * this.blockSize;
        this.remember(index, run.then((bytes) => bytes.subarray(from, from + this.blockSize)));
      }
      runStart = -1;
    };
    for (let index = first; index <= last; index++) {
      const cached = this.blocks.get(index);
      if (cached === undefined) {
        if (runStart < 0) runStart = index;
        continue;
      }
      flushRun(index);
      // Most recently used goes last.
      this.blocks.delete(index);
      this.blocks.set(index, cached);
    }
    flushRun(last + 1);
    for (let index = first; index <= last; index++) pending.push(this.blocks.get(index) ?? this.refetch(index, fileSize));
    const blocks = await Promise.all(pending);
    blocks.forEach((block, i) => {
      const blockStart = (first + i) * this.blockSize;
      const from = Math.max(offset, blockStart);
      const to = Math.min(offset + dest.length, blockStart + block.length);
      if (to > from) dest.set(block.subarray(from - blockStart, to - blockStart), from - offset);
    });
  }

  /** A block evicted between planning and reading (a read larger than the cache): fetched on its own. */
  private refetch(index: number, fileSize: number): Promise<Uint8Array> {
    const start = index * this.blockSize;
    return this.fetchRange(start, Math.min(this.blockSize, fileSize - start));
  }

  private remember(index: number, block: Promise<Uint8Array>): void {
    this.blocks.set(index, block);
    // A failed fetch is not kept: the next read tries again.
    block.catch(() => {
      if (this.blocks.get(index) === block) this.blocks.delete(index);
    });
    while (this.blocks.size * this.blockSize > this.maxBytes) {
      const oldest = this.blocks.keys().next().value as number;
      this.blocks.delete(oldest);
    }
  }

  clear(): void {
    this.blocks.clear();
  }
}
