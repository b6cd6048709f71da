/**
 * A byte-bounded LRU cache of L2 tables keyed by host offset, so walking a 100 GiB image never holds all of its
 * metadata. Tables changed by writes are dirty: they stay until written back (the image flushes refcounts
 * first), and only clean tables are evicted. JS Map keeps insertion order, so the first key is the least
 * recently used.
 */
export class TableCache {
  private readonly tables = new Map<number, { bytes: Uint8Array; dirty: boolean }>();
  private bytes = 0;
  private dirtyBytes = 0;

  constructor(private readonly maxBytes: number) {}

  get(offset: number): Uint8Array | undefined {
    const entry = this.tables.get(offset);
    if (entry !== undefined) {
      this.tables.delete(offset);
      this.tables.set(offset, entry);
    }
    return entry?.bytes;
  }

  set(offset: number, table: Uint8Array): void {
    this.delete(offset);
    this.tables.set(offset, { bytes: table, dirty: false });
    this.bytes += table.length;
    this.evict();
  }

  markDirty(offset: number): void {
    const entry = this.tables.get(offset);
    if (entry === undefined || entry.dirty) return;
    entry.dirty = true;
    this.dirtyBytes += entry.bytes.length;
  }

  /** Dirty tables, oldest first; the caller writes them and calls markClean. */
  dirty(): Array<[number, Uint8Array]> {
    const out: Array<[number, Uint8Array]> = [];
    for (const [offset, entry] of this.tables) if (entry.dirty) out.push([offset, entry.bytes]);
    return out;
  }

  markClean(offset: number): void {
    const entry = this.tables.get(offset);
    if (entry === undefined || !entry.dirty) return;
    entry.dirty = false;
    this.dirtyBytes -= entry.bytes.length;
    this.evict();
  }

  /** True when dirty tables alone fill the cache: time to write them back. */
  get full(): boolean {
    return this.dirtyBytes >= this.maxBytes;
  }

  delete(offset: number): void {
    const old = this.tables.get(offset);
    if (old === undefined) return;
    this.bytes -= old.bytes.length;
    if (old.dirty) this.dirtyBytes -= old.bytes.length;
    this.tables.delete(offset);
  }

  /** Drops every table (after the active L1 changed wholesale); dirty tables must have been written. */
  clear(): void {
    this.tables.clear();
    this.bytes = 0;
    this.dirtyBytes = 0;
  }

  private evict(): void {
    if (this.bytes <= this.maxBytes) return;
    for (const [offset, entry] of this.tables) {
      if (this.bytes <= this.maxBytes || this.tables.size <= 1) return;
      if (!entry.dirty) this.delete(offset);
    }
  }

  get size(): number {
    return this.bytes;
  }
}
