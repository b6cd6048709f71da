import { Qcow2Error, convertToSink, createImageSink, type BlockDevice } from '@qcowkit/qcow2/engine';
import { FileStorage } from '@qcowkit/qcow2/node';
import { parseCloudImageOptions, type CloudFormat } from '../output/cloud-image-options.js';
import { CommandError } from '../output/errors.js';
import type { ConvertCopySettings } from './convert-flags.js';
import { newImageOptions } from './create-cloud.js';

interface CloudConvertFlags {
  options?: string;
  settings: ConvertCopySettings;
  flush: boolean;
}

/**
 * convert -O vpc|vmdk|vhdx: a new image of the source's size (a VHD may round it up, as qemu-img's does), filled
 * front to back with the source's non-zero data; -o takes the format's creation options.
 */
export async function convertIntoCloudFormat(
  source: BlockDevice,
  outputFilename: string,
  format: CloudFormat,
  flags: CloudConvertFlags,
  onProgress: (done: number, total: number) => void,
): Promise<void> {
  const options = parseCloudImageOptions(format, flags.options);
  if (options.refusal !== undefined) throw creationError(new CommandError(options.refusal), format, outputFilename);
  const storage = await FileStorage.open(outputFilename, { create: true });
  let sink;
  try {
    sink = await createImageSink(storage, newImageOptions(options, options.size ?? source.size), outputFilename);
  } catch (error) {
    await storage.close();
    throw creationError(error, format, outputFilename);
  }
  try {
    await convertToSink(source, sink, {
      sparseSize: flags.settings.sparseSize,
      onProgress,
      flush: flags.flush,
      ...(flags.settings.rateLimiter === undefined ? {} : { rateLimiter: flags.settings.rateLimiter }),
    });
  } finally {
    await sink.close();
  }
}

/** qemu-img's line for a target it could not create: "OUT: error while converting FMT: reason". */
export function creationError(error: unknown, format: string, outputFilename: string): unknown {
  const refused = error instanceof CommandError ? error.file === undefined : error instanceof Qcow2Error && (error.code === 'BAD_ARGUMENT' || error.code === 'SIZE_TOO_LARGE');
  return refused ? new CommandError(`error while converting ${format}: ${(error as Error).message}`, 1, outputFilename) : error;
}
