import { layerPermissions, probeFormat, replayVhdxLog, type BlockDevice, type CheckReport, type ImageFormat } from '@qcowkit/qcow2/engine';
import { FileStorage } from '@qcowkit/qcow2/node';
import { CommandError } from '../output/errors.js';

/**
 * Before check -r opens a VHDX: replays its log, as qemu does whenever it opens a VHDX for writing (a check
 * without -r then refuses the image, read-only, like qemu-img). Returns the corruptions this fixed (1 when there
 * was a log to replay, as qemu counts it).
 */
export async function repairBeforeOpen(filename: string, format: ImageFormat | undefined): Promise<number> {
  const storage = await FileStorage.open(filename, { writable: true });
  try {
    if ((format ?? (await probeFormat(storage))) !== 'vhdx') return 0;
    // Locked as qemu-img check -r holds its image before it replays anything.
    await storage.setPermissions(layerPermissions('vhdx', 'top', { write: true }));
    return (await replayVhdxLog(storage)) ? 1 : 0;
  } finally {
    await storage.close();
  }
}

/**
 * qemu-img check for the formats other than qcow2: a VMDK or VHDX device says what it finds (qemu's check is a
 * scan for grains or blocks past the end of the file), everything else has no check (exit 63, as qemu-img).
 * A VMDK check cannot repair (-r: no checks either); a VHDX's repair is its log replay (repairBeforeOpen).
 */
export async function checkFormatDevice(
  device: BlockDevice,
  filename: string,
  repair: { corruptionsFixed: number } | undefined,
  onMessage: (line: string) => void,
): Promise<CheckReport> {
  if (device.check === undefined || (repair !== undefined && device.format === 'vmdk')) throw new CommandError('This image format does not support checks', 63);
  const found = await device.check();
  // qemu's error_report lines carry the program's name; its bare prints (VMDK's) do not.
  for (const line of found.messages) onMessage(found.reports ? `qcowkit: ${line}` : line);
  return {
    filename,
    format: device.format as CheckReport['format'],
    checkErrors: 0,
    corruptions: found.corruptions,
    leaks: 0,
    corruptionsFixed: repair?.corruptionsFixed ?? 0,
    leaksFixed: 0,
    imageEndOffset: 0,
    totalClusters: 0,
    allocatedClusters: 0,
    fragmentedClusters: 0,
    compressedClusters: 0,
    messages: [],
    failure: found.failure,
  };
}
