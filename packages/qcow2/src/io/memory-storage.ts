import { Qcow2Error } from '../errors.js';
import type { Storage } from './storage.js';

/** Storage held in memory: for tests, browsers, and images built before they are written anywhere. */
export class MemoryStorage implements Storage {
  readonly name: string;
  private bytes: Uint8Array;
  private length: number;
  private readonly readOnly: boolean;

  constructor(initial: Uint8Array = new Uint8Array(0), options: { name?: string; readOnly?: boolean } = {}) {
    this.name = options.name ?? 'memory';
    this.bytes = initial;
    this.length = initial.length;
    this.readOnly = options.readOnly ?? false;
  }

  /** The current contents (a view, not a copy). */
  contents(): Uint8Array {
    return this.bytes.subarray(0, this.length);
  }

  async read(buffer: Uint8Array, offset: number): Promise<number> {
    if (offset >= this.length) return 0;
    const n = Math.min(buffer.length, this.length - offset);
    buffer.set(this.bytes.subarray(offset, offset + n));
    return n;
  }

  async write(buffer: Uint8Array, offset: number): Promise<void> {
    if (this.readOnly) throw new Qcow2Error('READ_ONLY', 'storage is read-only', { file: this.name });
    const end = offset + buffer.length;
    this.ensureCapacity(end);
    this.bytes.set(buffer, offset);
    if (end > this.length) this.length = end;
  }

  async size(): Promise<number> {
    return this.length;
  }

  async flush(): Promise<void> {}

  async truncate(size: number): Promise<void> {
    if (this.readOnly) throw new Qcow2Error('READ_ONLY', 'storage is read-only', { file: this.name });
    this.ensureCapacity(size);
    if (size < this.length) this.bytes.fill(0, size, this.length);
    this.length = size;
  }

  async close(): Promise<void> {}

  private ensureCapacity(size: number): void {
    if (size <= this.bytes.length) return;
    const grown = new Uint8Array(Math.max(size, this.bytes.length * 2));
    grown.set(this.bytes.subarray(0, this.length));
    this.bytes = grown;
  }
}
