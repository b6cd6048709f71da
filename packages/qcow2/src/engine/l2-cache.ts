/**
 * A byte-bounded LRU cache of metadata tables (L2 tables, refcount blocks) keyed by host offset, so walking a
 * 100 GiB image never holds all of its metadata. JS Map keeps insertion order: re-inserting on a hit makes the
 * first key the least recently used.
 */
export class TableCache {
  private readonly tables = new Map<number, Uint8Array>();
  private bytes = 0;

  constructor(private readonly maxBytes: number) {}

  get(offset: number): Uint8Array | undefined {
    const table = this.tables.get(offset);
    if (table !== undefined) {
      this.tables.delete(offset);
      this.tables.set(offset, table);
    }
    return table;
  }

  set(offset: number, table: Uint8Array): void {
    const old = this.tables.get(offset);
    if (old !== undefined) {
      this.bytes -= old.length;
      this.tables.delete(offset);
    }
    this.tables.set(offset, table);
    this.bytes += table.length;
    // Always keep the newest table, even when one table alone exceeds the bound.
    while (this.bytes > this.maxBytes && this.tables.size > 1) {
      const [oldest, evicted] = this.tables.entries().next().value as [number, Uint8Array];
      this.tables.delete(oldest);
      this.bytes -= evicted.length;
    }
  }

  delete(offset: number): void {
    const old = this.tables.get(offset);
    if (old === undefined) return;
    this.bytes -= old.length;
    this.tables.delete(offset);
  }

  get size(): number {
    return this.bytes;
  }
}
