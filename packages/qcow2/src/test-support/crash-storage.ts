import type { Storage } from '../io/storage.js';

/** Thrown by CrashStorage at its crash point: the operation under test stops there, as if killed. */
export class Crashed extends Error {
  constructor() {
    super('crashed at the chosen write');
  }
}

/**
 * A storage that lets its first `survivingWrites` writes (and truncates) through and then "crashes": that write
 * and every later one throw Crashed without touching the bytes. What is left in the inner storage is exactly
 * the prefix of the write sequence a process killed before its next write would leave (writes reach the page
 * cache in call order; see docs/crash-safety.md). `writes` counts every write asked for, so a run with
 * `survivingWrites = Infinity` tells how many crash points an operation has.
 */
export class CrashStorage implements Storage {
  writes = 0;

  constructor(
    private readonly inner: Storage,
    private readonly survivingWrites: number,
  ) {}

  get name(): string {
    return this.inner.name;
  }

  private before(): void {
    this.writes++;
    if (this.writes > this.survivingWrites) throw new Crashed();
  }

  read(buffer: Uint8Array, offset: number): Promise<number> {
    return this.inner.read(buffer, offset);
  }
  async write(buffer: Uint8Array, offset: number): Promise<void> {
    this.before();
    await this.inner.write(buffer, offset);
  }
  async truncate(size: number): Promise<void> {
    this.before();
    await this.inner.truncate(size);
  }
  size(): Promise<number> {
    return this.inner.size();
  }
  flush(): Promise<void> {
    return this.inner.flush();
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}
