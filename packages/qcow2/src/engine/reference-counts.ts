/**
 * The computed reference count of every host cluster (qemu's in-memory refcount table). One u32 per cluster;
 * with 64-bit refcounts a count that reaches 2^32 - 1 continues in a small side map, so no width is lost.
 */
export class ReferenceCounts {
  private counts: Uint32Array;
  private overflow: Map<number, number> | undefined;
  /** Clusters the comparison covers (qemu's nb_clusters): the file's clusters, grown by references past it. */
  size: number;

  constructor(
    size: number,
    private readonly limit: number,
    readonly max: number,
  ) {
    this.size = size;
    this.counts = new Uint32Array(Math.min(limit, size + 1));
  }

  /**
   * The counters themselves, for scans: entry i is cluster i's count, or 0xffffffff when it may continue in the
   * overflow map (then ask get()).
   */
  get raw(): Uint32Array {
    return this.counts;
  }

  get(cluster: number): number {
    if (cluster >= this.counts.length) return 0;
    const base = this.counts[cluster]!;
    return base === 0xffffffff && this.overflow !== undefined ? base + (this.overflow.get(cluster) ?? 0) : base;
  }

  /** Makes room for `size` clusters (qemu's realloc_refcount_array); false when that exceeds the limit. */
  grow(size: number): boolean {
    if (size <= this.size) return true;
    if (size > this.limit) return false;
    if (size > this.counts.length) {
      const grown = new Uint32Array(Math.min(this.limit, Math.max(size, Math.ceil(this.counts.length * 1.25))));
      grown.set(this.counts);
      this.counts = grown;
    }
    this.size = size;
    return true;
  }

  /** Adds one reference; false when the count is already at the refcount maximum (qemu's overflow). */
  increment(cluster: number): boolean {
    const value = this.get(cluster);
    if (value >= this.max) return false;
    if (this.counts[cluster]! < 0xffffffff) {
      this.counts[cluster] = this.counts[cluster]! + 1;
    } else {
      this.overflow ??= new Map();
      this.overflow.set(cluster, (this.overflow.get(cluster) ?? 0) + 1);
    }
    return true;
  }

  /** Sets a count directly (a freshly allocated structure counts 1). */
  set(cluster: number, value: number): void {
    if (value >= 0xffffffff) {
      this.counts[cluster] = 0xffffffff;
      this.overflow ??= new Map();
      this.overflow.set(cluster, value - 0xffffffff);
    } else {
      this.counts[cluster] = value;
      this.overflow?.delete(cluster);
    }
  }

  clear(size: number): void {
    if (size + 1 > this.counts.length) this.counts = new Uint32Array(Math.min(this.limit, size + 1));
    this.counts.fill(0);
    this.overflow = undefined;
    this.size = size;
  }
}
