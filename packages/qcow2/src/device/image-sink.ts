/**
 * ImageSink: a new image of a format that is written front to back (VHD, VMDK, VHDX), as the generic convert
 * (ops/convert-to-sink.ts) fills it. The convert hands over the guest's non-zero runs in increasing offset
 * order; the format allocates its blocks or grains as they arrive and writes its tables at the end, so ops never
 * learns which format it fills, and nothing is ever read back from the new file.
 */
export interface ImageSink {
  /** The new image's file name, for messages. */
  readonly filename: string;
  /**
   * Virtual size of the new image, in bytes. It may be larger than asked for (a VHD without force_size rounds
   * up to its CHS geometry); everything past the source reads as zeros.
   */
  readonly size: number;
  /**
   * Stores guest bytes at `offset`. Calls come with increasing, non-overlapping offsets (gaps between them
   * read as zeros); `data` may be reused by the caller once the promise settles.
   */
  write(data: Uint8Array, offset: number): Promise<void>;
  /**
   * Writes what comes last (tables, footers, and the bytes that make the file recognisable as its format) and,
   * with `flush`, makes the whole image stable on disk. Only after it does the file claim to be a whole image.
   */
  finish(options?: { flush?: boolean }): Promise<void>;
  /** Closes the files, finished or not. */
  close(): Promise<void>;
}
