import type { Storage } from '../io/storage.js';

/**
 * What a streamed conversion allocates, in guest order: runs of whole data clusters, or single compressed
 * clusters with their stream length. Kept in scratch storage (16 bytes a record) rather than in memory, so a
 * conversion holds a bounded amount of memory whatever the image size; read back sequentially as often as the
 * writer needs (sizing, refcounts, L2 tables, data).
 */
export interface AllocationRecord {
  /** First guest cluster. */
  guestCluster: number;
  /** Clusters in the run (1 for a compressed cluster). */
  count: number;
  /** Bytes each cluster occupies in the data region: the cluster size for data clusters, less when compressed. */
  storedLength: number;
}

const RECORD_BYTES = 16;
const BUFFER_RECORDS = 4096;

export class AllocationLog {
  private readonly buffer = new Uint8Array(RECORD_BYTES * BUFFER_RECORDS);
  private readonly view = new DataView(this.buffer.buffer);
  private buffered = 0;
  private written = 0;
  /** A run still open for merging with the next clusters. */
  private pending: AllocationRecord | undefined;

  constructor(
    private readonly storage: Storage,
    private readonly clusterSize: number,
  ) {}

  /** Adds `count` whole data clusters from `guestCluster`, merged with the run before when they follow it. */
  async addClusters(guestCluster: number, count: number): Promise<void> {
    const p = this.pending;
    if (p !== undefined && p.storedLength === this.clusterSize && p.guestCluster + p.count === guestCluster && p.count + count <= 0xffffffff) {
      p.count += count;
      return;
    }
    await this.closePending();
    this.pending = { guestCluster, count, storedLength: this.clusterSize };
  }

  /** Adds one compressed cluster whose stream is `storedLength` bytes. */
  async addCompressed(guestCluster: number, storedLength: number): Promise<void> {
    await this.closePending();
    await this.append({ guestCluster, count: 1, storedLength });
  }

  private async closePending(): Promise<void> {
    if (this.pending === undefined) return;
    const record = this.pending;
    this.pending = undefined;
    await this.append(record);
  }

  private async append(record: AllocationRecord): Promise<void> {
    const at = this.buffered * RECORD_BYTES;
    this.view.setFloat64(at, record.guestCluster);
    this.view.setUint32(at + 8, record.count);
    this.view.setUint32(at + 12, record.storedLength);
    if (++this.buffered === BUFFER_RECORDS) await this.flushBuffer();
  }

  private async flushBuffer(): Promise<void> {
    if (this.buffered === 0) return;
    await this.storage.write(this.buffer.subarray(0, this.buffered * RECORD_BYTES), this.written);
    this.written += this.buffered * RECORD_BYTES;
    this.buffered = 0;
  }

  /** Ends writing; records can be read from here on. */
  async finish(): Promise<void> {
    await this.closePending();
    await this.flushBuffer();
  }

  /** The records in the order they were added. */
  async *records(): AsyncGenerator<AllocationRecord> {
    const chunk = new Uint8Array(RECORD_BYTES * BUFFER_RECORDS);
    const view = new DataView(chunk.buffer);
    for (let at = 0; at < this.written; at += chunk.length) {
      const n = Math.min(chunk.length, this.written - at);
      await this.storage.read(chunk.subarray(0, n), at);
      for (let i = 0; i < n; i += RECORD_BYTES) {
        yield { guestCluster: view.getFloat64(i), count: view.getUint32(i + 8), storedLength: view.getUint32(i + 12) };
      }
    }
  }
}
