import type { BlockDevice, CheckReport } from '@qcowkit/qcow2/engine';
import { CommandError } from '../output/errors.js';

/**
 * qemu-img check for the formats other than qcow2: a VMDK or VHDX device says what it finds (qemu's check is a
 * scan for grains or blocks past the end of the file), everything else has no check (exit 63, as qemu-img).
 * A VMDK check cannot repair (-r: no checks either); a VHDX image whose log needs replaying does not open
 * read-only, so -r is refused rather than half done.
 */
export async function checkFormatDevice(device: BlockDevice, filename: string, repair: boolean, onMessage: (line: string) => void): Promise<CheckReport> {
  if (device.check === undefined || (repair && device.format === 'vmdk')) throw new CommandError('This image format does not support checks', 63);
  if (repair) throw new CommandError(`check -r on ${device.format} images is not supported by qcowkit`);
  const found = await device.check();
  // qemu's error_report lines carry the program's name; its bare prints (VMDK's) do not.
  for (const line of found.messages) onMessage(found.reports ? `qcowkit: ${line}` : line);
  return {
    filename,
    format: device.format as CheckReport['format'],
    checkErrors: 0,
    corruptions: found.corruptions,
    leaks: 0,
    corruptionsFixed: 0,
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
