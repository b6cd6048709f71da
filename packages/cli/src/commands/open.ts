import { FORCE_SHARE_WRITABLE_MESSAGE, untrustedGate, type BlockDevice, type ImageFormat } from '@qcowkit/qcow2/engine';
import { openImageFile } from '@qcowkit/qcow2/node';
import { CommandError } from '../output/errors.js';

/** The options every image-reading command shares. */
export interface ImageOpenFlags {
  format?: string;
  untrusted?: boolean;
  /** Open without the backing chain (qemu-img -u style). */
  noBacking?: boolean;
  /** -U: let others write the images meanwhile (qemu-img --force-share); no lock refuses the open. */
  forceShare?: boolean;
  /** Refuse other writers even on a raw image (qemu-img convert's sources). */
  refuseWriters?: boolean;
}

/** The -U option as qemu-img words it. */
export const FORCE_SHARE_OPTION = ['-U, --force-share', 'open the image even if another process (a running guest) writes it'] as const;

/** qemu-img refuses -U for an image it opens for writing. */
export function refuseForceShareForWriting(flags: { forceShare?: boolean }, filename: string): void {
  if (flags.forceShare) throw new CommandError(`Could not open '${filename}': ${FORCE_SHARE_WRITABLE_MESSAGE}`, 1, filename);
}

const FORMATS: readonly string[] = ['raw', 'qcow2', 'vpc', 'vmdk', 'vhdx'] satisfies ImageFormat[];

export function parseFormatFlag(format: string | undefined): ImageFormat | undefined {
  if (format === undefined) return undefined;
  if (FORMATS.includes(format)) return format as ImageFormat;
  throw new CommandError(`Unknown file format '${format}'`);
}

/** Opens an image for reading with the CLI's policy: qemu-img's by default, refusing references with --untrusted. */
export function openForReading(filename: string, flags: ImageOpenFlags): Promise<BlockDevice> {
  const format = parseFormatFlag(flags.format);
  return openImageFile(filename, {
    ...(format === undefined ? {} : { format }),
    ...(flags.untrusted ? { gate: untrustedGate } : {}),
    ...(flags.noBacking ? { openBacking: false } : {}),
    ...(flags.forceShare ? { forceShare: true } : {}),
    ...(flags.refuseWriters ? { refuseWriters: true } : {}),
  });
}

/** Runs `body` with the device open and closes it afterwards, whatever happens. */
export async function withDevice<T>(device: BlockDevice, body: (device: BlockDevice) => Promise<T>): Promise<T> {
  try {
    return await body(device);
  } finally {
    await device.close();
  }
}
