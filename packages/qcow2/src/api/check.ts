import { checkStorage, type CheckReport } from '../engine/check.js';
import { repairStorage, type RepairMode } from '../engine/repair.js';
import { Qcow2Error } from '../errors.js';
import type { Storage } from '../io/storage.js';
import type { Host } from './host.js';

/** Options of {@link check}. */
export interface CheckOptions {
  /** Opens `source` when it is a name. */
  host?: Host;
  /** Repair what is found (`qemu-img check -r`): `'leaks'` frees leaked clusters, `'all'` fixes corruptions too. */
  repair?: RepairMode;
}

/** A check's findings; after a repair, also what it fixed. */
export interface CheckResult extends CheckReport {
  /** With `repair`: the findings before anything was fixed (the counts above are those after the repair). */
  beforeRepair?: CheckReport;
}

/**
 * Checks a qcow2 image's metadata as `qemu-img check` does (refcounts against every reference, leaks,
 * corruptions, L1/L2 consistency) and optionally repairs it. It reads the file itself, so it also examines
 * images that {@link open} refuses (a dirty or corrupt-marked image).
 *
 * @param source - The image's name (opened through `options.host`) or a {@link Storage} (writable to repair).
 * @param options - The host, and the repair mode.
 * @returns qemu-img check's counts: `corruptions`, `leaks`, `checkErrors`, clusters allocated, fragmented…
 * @throws {@link Qcow2Error} `BAD_MAGIC` and other header errors (the check cannot start), `BAD_ARGUMENT` for a
 *   bad repair mode, `IO_ERROR`.
 *
 * @example
 * ```ts
 * import { check, create, write, memoryHost } from '@qcowkit/qcow2';
 * const host = memoryHost();
 * const image = await create('disk.qcow2', { host, size: 1 << 20 });
 * await write(image, new Uint8Array(512).fill(7), 0);
 * await image.close();
 * const report = await check('disk.qcow2', { host });
 * console.log(report.corruptions, report.leaks, report.allocatedClusters); // 0 0 1
 * ```
 */
export async function check(source: string | Storage, options: CheckOptions = {}): Promise<CheckResult> {
  const writable = options.repair !== undefined;
  let storage: Storage;
  if (typeof source === 'string') {
    if (options.host === undefined) throw new Qcow2Error('BAD_ARGUMENT', 'check() needs a host to open a file by name', { file: source });
    storage = await options.host.files.open(source, { writable });
  } else storage = source;
  try {
    if (options.repair === undefined) return await checkStorage(storage);
    const { repair, recheck } = await repairStorage(storage, options.repair);
    if (recheck === undefined) return repair;
    return { ...recheck, leaksFixed: repair.leaksFixed, corruptionsFixed: repair.corruptionsFixed, beforeRepair: repair };
  } finally {
    if (typeof source === 'string') await storage.close();
  }
}
