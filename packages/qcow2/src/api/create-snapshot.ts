import { snapshotInfos, type SnapshotInfo } from '../ops/image-info.js';
import type { Image } from './image.js';
import { writableQcow2 } from './snapshot-device.js';

/** Options of {@link createSnapshot}. */
export interface CreateSnapshotOptions {
  /** The snapshot's name (ids are numbered by the engine, as qemu does). */
  name: string;
  /** When it was taken, in seconds and nanoseconds since the epoch (default: now). */
  date?: { sec: number; nsec: number };
  /** The guest's clock at that moment, in nanoseconds (default 0: a disk-only snapshot). */
  vmClockNsec?: number;
}

/**
 * Takes an internal snapshot of the image's current state (`qemu-img snapshot -c`): the clusters in use are
 * shared, not copied, so it is instant; later writes copy what they change.
 *
 * @param image - An image opened with `writable: true`.
 * @param options - The snapshot's name (and optionally date and VM clock).
 * @returns The new snapshot, as {@link listSnapshots} reports it.
 * @throws {@link Qcow2Error} `READ_ONLY` for an image opened read-only, `BAD_ARGUMENT` for a raw image or a
 *   name qemu refuses, `TOO_MANY_SNAPSHOTS`.
 *
 * @example
 * ```ts
 * import { create, createSnapshot, memoryHost } from '@qcowkit/qcow2';
 * await using image = await create('disk.qcow2', { host: memoryHost(), size: 1 << 20 });
 * const snapshot = await createSnapshot(image, { name: 'before-upgrade' });
 * console.log(snapshot.id, snapshot.name); // 1 before-upgrade
 * ```
 */
export async function createSnapshot(image: Image, options: CreateSnapshotOptions): Promise<SnapshotInfo> {
  const device = writableQcow2(image, 'createSnapshot');
  const entry = await device.createSnapshot(options);
  return snapshotInfos(device).find((info) => info.id === entry.id)!;
}
