/// <reference lib="esnext.disposable" preserve="true" />
import type { BlockDevice, Extent, ImageFormat } from '../device/block-device.js';
import { isWritable } from '../device/block-device.js';
import { Qcow2Device } from '../device/qcow2-device.js';
import { snapshotInfos, type SnapshotInfo } from '../ops/image-info.js';
import type { Host } from './host.js';

/**
 * Writable images dropped without `close()` lose the metadata still cached in memory (L2 tables, refcounts) and
 * leave the dirty bit set on lazy-refcount images. Nothing can flush once the object is gone, but the garbage
 * collector can at least say so: in Node as a process warning, elsewhere on the console.
 */
const unclosedWritable =
  typeof FinalizationRegistry === 'function'
    ? new FinalizationRegistry<string>((path) => {
        const message = `qcowkit: image '${path}' was opened writable and never closed: writes still cached in memory were lost (call close(), or use "await using")`;
        const processLike = (globalThis as { process?: { emitWarning?: (message: string, type?: string) => void } }).process;
        if (typeof processLike?.emitWarning === 'function') processLike.emitWarning(message, 'QcowkitWarning');
        else console.warn(message);
      })
    : undefined;

// Runtimes without explicit resource management yet get the registry symbol that TypeScript's `await using`
// helper also looks for, so `[Symbol.asyncDispose]` below names a real symbol everywhere.
(Symbol as { asyncDispose?: symbol }).asyncDispose ??= Symbol.for('Symbol.asyncDispose');

/**
 * An open disk image (and, below it, its backing chain): what {@link open} and {@link create} return, and what
 * the other operations take. Its properties are plain data, the same whatever the format, so nothing needs an
 * `instanceof` test. Close it with {@link Image.close}, or let `await using` do it.
 *
 * @example
 * ```ts
 * import { create, open, memoryHost } from '@qcowkit/qcow2';
 * const host = memoryHost();
 * await (await create('disk.qcow2', { host, size: 1 << 20 })).close();
 * await using image = await open('disk.qcow2', { host });
 * console.log(image.format, image.virtualSize, image.clusterSize); // qcow2 1048576 65536
 * ```
 */
export class Image implements AsyncDisposable {
  /** The name it was opened by (a path, a URL, a File's name). */
  readonly path: string;
  /** `'qcow2'` or `'raw'`. */
  readonly format: ImageFormat;
  /** The image below this one in the chain, opened the same way; undefined at the bottom or when not opened. */
  readonly backing: Image | undefined;
  /** The host the image was opened through (operations that open more files use it). */
  readonly host: Host | undefined;
  private closed = false;

  /** @internal Built by {@link open} and {@link create}; wraps the engine's block device. */
  constructor(
    /** The engine's block device, for the low-level operations of `@qcowkit/qcow2/engine`. */
    readonly device: BlockDevice,
    host: Host | undefined,
  ) {
    this.path = device.filename;
    this.format = device.format;
    this.host = host;
    this.backing = device.backing === undefined ? undefined : new Image(device.backing, host);
    if (this.writable) unclosedWritable?.register(this, this.path, this);
  }

  /** Size of the disk the guest sees, in bytes. */
  get virtualSize(): number {
    return this.device.size;
  }

  /** Whether the image was opened for writing (only the top of a chain ever is). */
  get writable(): boolean {
    return isWritable(this.device) && (!(this.device instanceof Qcow2Device) || this.device.writable);
  }

  /** The qcow2 cluster size in bytes; undefined for raw images. */
  get clusterSize(): number | undefined {
    return this.device instanceof Qcow2Device ? this.device.image.clusterSize : undefined;
  }

  /** The backing file name exactly as the image stores it; undefined when it has none (or is raw). */
  get backingFile(): string | undefined {
    const name = this.device instanceof Qcow2Device ? this.device.image.backingFile : undefined;
    return name === '' ? undefined : name;
  }

  /** The backing file's format as the image stores it, when it names one. */
  get backingFormat(): string | undefined {
    const format = this.device instanceof Qcow2Device ? this.device.image.backingFormat : undefined;
    return format === '' ? undefined : format;
  }

  /** The internal snapshots, as `qemu-img snapshot -l` lists them (always empty for raw images). */
  get snapshots(): readonly SnapshotInfo[] {
    return snapshotInfos(this.device);
  }

  /** Whether the image's dirty bit is set (it was not closed cleanly with lazy refcounts). */
  get dirty(): boolean {
    return this.device instanceof Qcow2Device ? this.device.image.dirty : false;
  }

  /**
   * What lies in a guest range: data, zeros or nothing, and in which chain layer (see {@link map} for
   * qemu-img's view of the same answer).
   */
  extents(offset: number, length: number): Promise<Extent[]> {
    return this.device.extents(offset, length);
  }

  /** Writes back what is cached and, for a writable image, makes it durable; then releases the files. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    unclosedWritable?.unregister(this);
    await this.device.close();
  }

  /** Closes the image: `await using image = await open(…)` calls this on leaving the block. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
