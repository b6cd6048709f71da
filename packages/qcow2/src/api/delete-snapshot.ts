import type { SnapshotInfo } from '../ops/image-info.js';
import type { Image } from './image.js';
import { writableQcow2 } from './snapshot-device.js';

/**
 * Deletes an internal snapshot (`qemu-img snapshot -d`), freeing the clusters only it still used.
 *
 * @param image - An image opened with `writable: true`.
 * @param idOrName - The snapshot's id, or else its name.
 * @returns The snapshot as it was listed before it was deleted.
 * @throws {@link Qcow2Error} `SNAPSHOT_NOT_FOUND`, `READ_ONLY`, `BAD_ARGUMENT` for a raw image.
 *
 * @example
 * ```ts
 * import { create, createSnapshot, deleteSnapshot, listSnapshots, memoryHost } from '@qcowkit/qcow2';
 * await using image = await create('disk.qcow2', { host: memoryHost(), size: 1 << 20 });
 * await createSnapshot(image, { name: 'tmp' });
 * await deleteSnapshot(image, 'tmp');
 * console.log(listSnapshots(image).length); // 0
 * ```
 */
export async function deleteSnapshot(image: Image, idOrName: string): Promise<SnapshotInfo> {
  const device = writableQcow2(image, 'deleteSnapshot');
  const before = image.snapshots;
  const entry = await device.deleteSnapshot(idOrName);
  return before.find((info) => info.id === entry.id)!;
}
