import { snapshotInfos, type SnapshotInfo } from '../ops/image-info.js';
import type { Image } from './image.js';
import { writableQcow2 } from './snapshot-device.js';

/**
 * Reverts the image's current state to an internal snapshot (`qemu-img snapshot -a`): what was written since
 * is dropped. The snapshot is kept.
 *
 * @param image - An image opened with `writable: true`.
 * @param idOrName - The snapshot's id, or else its name (qemu's lookup order).
 * @returns The snapshot applied.
 * @throws {@link Qcow2Error} `SNAPSHOT_NOT_FOUND`, `READ_ONLY`, `BAD_ARGUMENT` for a raw image.
 *
 * @example
 * ```ts
 * import { applySnapshot, create, createSnapshot, read, write, memoryHost } from '@qcowkit/qcow2';
 * await using image = await create('disk.qcow2', { host: memoryHost(), size: 1 << 20 });
 * await createSnapshot(image, { name: 'empty' });
 * await write(image, new Uint8Array([42]), 0);
 * await applySnapshot(image, 'empty');
 * console.log((await read(image, 0, 1))[0]); // 0
 * ```
 */
export async function applySnapshot(image: Image, idOrName: string): Promise<SnapshotInfo> {
  const device = writableQcow2(image, 'applySnapshot');
  const entry = await device.applySnapshot(idOrName);
  return snapshotInfos(device).find((info) => info.id === entry.id)!;
}
