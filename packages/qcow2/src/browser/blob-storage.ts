import { Qcow2Error } from '../errors.js';
import type { Storage } from '../io/storage.js';

/**
 * A `Blob` (a `File` the user picked, or dropped) as read-only storage: each read slices the blob, so only the
 * bytes asked for are read, whatever the file's size.
 */
export class BlobStorage implements Storage {
  constructor(
    private readonly blob: Blob,
    readonly name: string,
  ) {}

  async read(buffer: Uint8Array, offset: number): Promise<number> {
    if (offset >= this.blob.size || buffer.length === 0) return 0;
    const end = Math.min(this.blob.size, offset + buffer.length);
    let bytes: ArrayBuffer;
    try {
      bytes = await this.blob.slice(offset, end).arrayBuffer();
    } catch (error) {
      throw new Qcow2Error('IO_ERROR', `cannot read the file: ${(error as Error).message}`, { file: this.name, cause: error });
    }
    buffer.set(new Uint8Array(bytes));
    return bytes.byteLength;
  }

  async size(): Promise<number> {
    return this.blob.size;
  }

  async write(): Promise<void> {
    throw new Qcow2Error('READ_ONLY', 'a picked file is read-only (open it writable through browserHost to edit a copy)', { file: this.name });
  }

  async truncate(): Promise<void> {
    await this.write();
  }

  async flush(): Promise<void> {}

  async close(): Promise<void> {}
}
