import { BitmapEditor, Qcow2Device, Qcow2Error, bitmapSource, loadBitmapState, type BlockDevice } from '@qcowkit/qcow2/engine';
import { BitmapFlag, hasBitmapFlag } from '@qcowkit/qcow2/format';
import { openImageFile } from '@qcowkit/qcow2/node';
import { CommandError } from '../output/errors.js';

/** convert --bitmaps [--skip-broken-bitmaps]: the persistent bitmaps of the source, copied as qemu-img does. */
export interface ConvertBitmapFlags {
  bitmaps?: boolean;
  skipBrokenBitmaps?: boolean;
}

/** The checks qemu-img makes before it creates the output, with its messages. */
export async function checkBitmapCopy(flags: ConvertBitmapFlags, sources: BlockDevice[], output: { format: string; v2: boolean; toStdout: boolean }): Promise<void> {
  if (flags.skipBrokenBitmaps && !flags.bitmaps) throw new CommandError('Use of --skip-broken-bitmaps requires --bitmaps');
  if (!flags.bitmaps) return;
  if (sources.length > 1) throw new CommandError('Copying bitmaps only possible with single source');
  const source = sources[0]!;
  if (!(source instanceof Qcow2Device) || source.image.header.version < 3) throw new CommandError('Source lacks bitmap support');
  if (!flags.skipBrokenBitmaps) {
    for (const entry of (await loadBitmapState(source.image)).entries) {
      if (hasBitmapFlag(entry.flags, BitmapFlag.InUse)) {
        throw new CommandError(`Cannot copy inconsistent bitmap '${entry.name}'\nTry --skip-broken-bitmaps, or use 'qemu-img bitmap --remove' to delete it`);
      }
    }
  }
  // A v2 qcow2 image cannot hold bitmaps either.
  if (output.format !== 'qcow2' || output.v2) throw new CommandError(`Format driver '${output.format}' does not support bitmaps`);
  if (output.toStdout) throw new CommandError('--bitmaps cannot be used when the output is standard output (-)');
}

/**
 * After the data: each persistent bitmap of the source gets a bitmap of the same name, granularity and
 * enabled state in the output, with the same bits (qemu-img: add, then merge). In-use bitmaps are skipped with
 * qemu-img's warning under --skip-broken-bitmaps (checkBitmapCopy refused them otherwise).
 */
export async function copyBitmaps(source: BlockDevice, outputFilename: string, quiet: boolean): Promise<void> {
  if (!(source instanceof Qcow2Device)) return;
  const entries = (await loadBitmapState(source.image)).entries;
  if (entries.length === 0) return;
  const target = await openImageFile(outputFilename, { format: 'qcow2', writable: true, openBacking: false });
  try {
    if (!(target instanceof Qcow2Device) || target.attachedWriter === undefined) throw new CommandError('internal: output is not a writable qcow2 image');
    const editor = await BitmapEditor.open(target.image, target.attachedWriter.refcounts);
    for (const entry of entries) {
      if (hasBitmapFlag(entry.flags, BitmapFlag.InUse)) {
        if (!quiet) process.stderr.write(`qcowkit: warning: Skipping inconsistent bitmap '${entry.name}'\n`);
        continue;
      }
      try {
        await editor.add(entry.name, 2 ** entry.granularityBits, { disabled: !hasBitmapFlag(entry.flags, BitmapFlag.Auto) });
      } catch (error) {
        if (error instanceof Qcow2Error) throw new CommandError(`Failed to create bitmap ${entry.name}: ${error.message}`);
        throw error;
      }
      try {
        await editor.merge(entry.name, bitmapSource(source.image, entry));
      } catch (error) {
        if (error instanceof Qcow2Error) throw new CommandError(`Failed to populate bitmap ${entry.name}: ${error.message}`);
        throw error;
      }
    }
  } finally {
    await target.close();
  }
}
