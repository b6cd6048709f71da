import { createImageSink, Qcow2Error, type NewImageOptions } from '@qcowkit/qcow2/engine';
import { FileStorage, grainCompressor } from '@qcowkit/qcow2/node';
import { cloudFormattingLine, parseCloudImageOptions, type CloudFormat, type CloudImageOptions } from '../output/cloud-image-options.js';
import { CommandError, printWarning } from '../output/errors.js';
import { cvtnumBytes } from '../parse/qemu-size.js';

interface CloudCreateFlags {
  backing?: string;
  options?: string;
  quiet?: boolean;
}

/** The engine's options for a new image of `size` bytes (VMDK grains compressed on node:zlib's thread pool). */
export function newImageOptions(options: CloudImageOptions, size: number): NewImageOptions {
  const image = { ...options.image, size } as NewImageOptions;
  return image.format === 'vmdk' ? { ...image, compressGrain: grainCompressor } : image;
}

/** Writes a new, empty image of a front-to-back format into `filename` (emptied first), finished and flushed. */
export async function writeEmptyImage(filename: string, image: NewImageOptions): Promise<void> {
  const storage = await FileStorage.open(filename, { create: true });
  let sink;
  try {
    sink = await createImageSink(storage, image, filename);
  } catch (error) {
    await storage.close();
    throw error;
  }
  try {
    await sink.finish({ flush: true });
  } finally {
    await sink.close();
  }
}

/** qemu-img create -f vpc|vmdk|vhdx: qemu's Formatting line, then the empty image. */
export async function createCloudImage(filename: string, sizeText: string | undefined, format: CloudFormat, flags: CloudCreateFlags): Promise<void> {
  const options = parseCloudImageOptions(format, flags.options);
  if (flags.backing !== undefined || options.given.has('backing_file')) {
    throw new CommandError(`Backing files are not supported for ${format} images by qcowkit`);
  }
  if (sizeText !== undefined && options.size !== undefined) throw new CommandError('The image size must be specified only once');
  const size = sizeText === undefined ? options.size : cvtnumBytes('image size', sizeText, printWarning);
  if (size === undefined) throw new CommandError('Image creation needs a size parameter');
  if (!flags.quiet) process.stdout.write(`${cloudFormattingLine(filename, options, size)}\n`);
  if (options.refusal !== undefined) throw new CommandError(options.refusal);
  try {
    await writeEmptyImage(filename, newImageOptions(options, size));
  } catch (error) {
    // qemu-img create's words for a size the format cannot address (EFBIG); other refusals pass through as qemu's do.
    if (error instanceof Qcow2Error && error.code === 'SIZE_TOO_LARGE') {
      throw new CommandError(`The image size is too large for file format '${format}'`);
    }
    if (error instanceof Qcow2Error && error.code === 'BAD_ARGUMENT') throw new CommandError(error.message);
    throw error;
  }
}
