import type { SnapshotInfo } from '../ops/image-info.js';
import type { Image } from './image.js';

/**
 * The internal snapshots of an image, as `qemu-img snapshot -l` lists them (and `qemu-img info` reports
 * them): id, name, VM state size, dates and VM clock. Raw images have none.
 *
 * @param image - An open image.
 * @returns The snapshots in table order (a copy: later changes do not show in it).
 *
 * @example
 * ```ts
 * import { create, createSnapshot, listSnapshots, memoryHost } from '@qcowkit/qcow2';
 * await using image = await create('disk.qcow2', { host: memoryHost(), size: 1 << 20 });
 * await createSnapshot(image, { name: 'clean' });
 * console.log(listSnapshots(image).map((s) => `${s.id} ${s.name}`)); // [ '1 clean' ]
 * ```
 */
export function listSnapshots(image: Image): SnapshotInfo[] {
  return [...image.snapshots];
}
