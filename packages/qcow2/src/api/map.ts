import { mapImage, type MapEntry } from '../ops/map.js';
import type { Image } from './image.js';

/** Options of {@link map}: the guest range to map. */
export interface MapOptions {
  /** First guest byte (default 0). */
  offset?: number;
  /** Bytes to map (default: to the end of the disk). */
  length?: number;
}

/**
 * The allocation map, as `qemu-img map --output=json` gives it: for each run of the guest disk, whether it is
 * allocated (`present`), reads as zeros (`zero`), holds data (`data`), in which chain layer (`depth`) and at
 * which host offset. Only metadata is read (L1/L2 tables), never guest data, so mapping a large sparse image
 * (even over HTTP) moves little.
 *
 * @param image - An open image.
 * @param options - The guest range to map.
 * @returns The entries in guest order, adjacent alike entries merged.
 * @throws {@link Qcow2Error} `BAD_L2_ENTRY`, `TRUNCATED` for a damaged image, `IO_ERROR` from the host.
 *
 * @example
 * ```ts
 * import { create, write, map, memoryHost } from '@qcowkit/qcow2';
 * await using image = await create('disk.qcow2', { host: memoryHost(), size: 4 << 20 });
 * await write(image, new Uint8Array(4096).fill(1), 1 << 20);
 * const entries = [];
 * for await (const entry of map(image)) entries.push(entry);
 * console.log(entries.filter((e) => e.data).map((e) => [e.start, e.length])); // [[1048576, 65536]]
 * ```
 */
export function map(image: Image, options: MapOptions = {}): AsyncGenerator<MapEntry> {
  const offset = options.offset ?? 0;
  return mapImage(image.device, offset, options.length ?? image.virtualSize - offset);
}
