import type { Command } from 'commander';
import { BitmapEditor, Qcow2Device, Qcow2Error, bitmapSource, loadBitmapState, type BitmapSource } from '@qcowkit/qcow2/engine';
import { BitmapFlag, hasBitmapFlag } from '@qcowkit/qcow2/format';
import { openImageFile } from '@qcowkit/qcow2/node';
import { CommandError } from '../output/errors.js';
import { cvtnumBytes } from '../parse/qemu-size.js';
import { parseFormatFlag, withDevice } from './open.js';

type BitmapAction = { act: 'add' | 'remove' | 'clear' | 'enable' | 'disable' } | { act: 'merge'; source: string };

interface BitmapFlags {
  format?: string;
  sourceFile?: string;
  sourceFormat?: string;
  granularity?: string;
}

const INCONSISTENT_WARNING = 'a program lacking bitmap support modified this file, so all bitmaps are now considered inconsistent';

/**
 * qemu-img bitmap (--add | --remove | --clear | --enable | --disable | --merge SOURCE)... [-b SOURCE_FILE
 * [-F FMT]] [-g GRANULARITY] [-f FMT] FILE BITMAP: changes the persistent dirty bitmaps of a qcow2 image, in
 * the order the actions are given. Each action is stored as it succeeds (a failing one leaves the earlier ones
 * done, as with qemu-img); errors read "Operation ACTION on bitmap NAME failed: …" and exit 1.
 */
export function registerBitmap(program: Command): void {
  const actions: BitmapAction[] = [];
  const command = program
    .command('bitmap')
    .description('add, remove, clear, enable, disable or merge persistent dirty bitmaps of qcow2 image FILE')
    .argument('[filename]')
    .argument('[bitmap]')
    .argument('[extra...]')
    .option('--add', 'create BITMAP (enabled), empty')
    .option('--remove', 'delete BITMAP')
    .option('--clear', 'set every bit of BITMAP to 0')
    .option('--enable', 'make BITMAP record writes')
    .option('--disable', 'make BITMAP stop recording writes')
    .option('--merge <source>', 'set in BITMAP every bit set in bitmap SOURCE (of FILE, or of -b SOURCE_FILE)')
    .option('-g, --granularity <size>', 'bytes of guest data one bit covers, for --add (default: the cluster size, within 4k..64k)')
    .option('-b, --source-file <source_file>', 'the image --merge takes its SOURCE bitmap from')
    .option('-F, --source-format <fmt>', 'format of -b SOURCE_FILE')
    .option('-f, --format <fmt>', 'image format');
  // Actions keep their order on the command line (commander reports each option as it meets it).
  for (const act of ['add', 'remove', 'clear', 'enable', 'disable'] as const) command.on(`option:${act}`, () => actions.push({ act }));
  command.on('option:merge', (source: string) => actions.push({ act: 'merge', source }));
  command.action(async (filename: string | undefined, bitmap: string | undefined, extra: string[], flags: BitmapFlags) => {
    if (actions.length === 0) throw new CommandError('Need at least one of --add, --remove, --clear, --enable, --disable, or --merge');
    const granularity = flags.granularity === undefined ? undefined : cvtnumBytes('granularity', flags.granularity);
    if (granularity !== undefined && !actions.some((a) => a.act === 'add')) throw new CommandError('granularity only supported with --add');
    if (flags.sourceFormat !== undefined && flags.sourceFile === undefined) throw new CommandError('-F only supported with -b');
    if (flags.sourceFile !== undefined && !actions.some((a) => a.act === 'merge')) throw new CommandError('Merge bitmap source file only supported with --merge');
    if (filename === undefined || bitmap === undefined || extra.length > 0) throw new CommandError('Expecting filename and bitmap name');
    const format = parseFormatFlag(flags.format);
    // Bitmaps live in the image itself: its backing chain is not opened (as qemu-img).
    const device = await openImageFile(filename, { ...(format === undefined ? {} : { format }), writable: true, openBacking: false });
    await withDevice(device, async () => {
      const sourceFormat = parseFormatFlag(flags.sourceFormat);
      const source = flags.sourceFile === undefined ? undefined : await openImageFile(flags.sourceFile, { ...(sourceFormat === undefined ? {} : { format: sourceFormat }), openBacking: false });
      try {
        await runActions(device, bitmap, actions, granularity, source);
      } finally {
        await source?.close();
      }
    });
  });
}

async function runActions(
  device: Awaited<ReturnType<typeof openImageFile>>,
  bitmap: string,
  actions: BitmapAction[],
  granularity: number | undefined,
  sourceDevice: Awaited<ReturnType<typeof openImageFile>> | undefined,
): Promise<void> {
  const editor = device instanceof Qcow2Device && device.attachedWriter !== undefined ? await BitmapEditor.open(device.image, device.attachedWriter.refcounts) : undefined;
  if (editor !== undefined && !(await loadBitmapState((device as Qcow2Device).image)).consistent && (device as Qcow2Device).image.header.version >= 3) {
    process.stderr.write(`qcowkit: warning: ${INCONSISTENT_WARNING}\n`);
  }
  for (const action of actions) {
    try {
      if (editor === undefined) {
        // Bitmaps need qcow2: raw has nowhere to keep them.
        if (action.act === 'add') throw new CommandError(`Can't store persistent bitmaps to '${device.filename}': Operation not supported`);
        throw new CommandError(`Dirty bitmap '${action.act === 'merge' ? action.source : bitmap}' not found`);
      }
      switch (action.act) {
        case 'add':
          await editor.add(bitmap, granularity);
          break;
        case 'remove':
          await editor.remove(bitmap);
          break;
        case 'clear':
          await editor.clear(bitmap);
          break;
        case 'enable':
          await editor.setEnabled(bitmap, true);
          break;
        case 'disable':
          await editor.setEnabled(bitmap, false);
          break;
        case 'merge': {
          editor.usable(bitmap);
          await editor.merge(bitmap, await mergeSource(editor, action.source, sourceDevice));
          break;
        }
      }
    } catch (error) {
      if (error instanceof Qcow2Error || error instanceof CommandError) {
        throw new CommandError(`Operation ${action.act} on bitmap ${bitmap} failed: ${error.message}`);
      }
      throw error;
    }
  }
}

/** The --merge source: a bitmap of the image itself, or of -b SOURCE_FILE (read only). */
async function mergeSource(editor: BitmapEditor, name: string, sourceDevice: Awaited<ReturnType<typeof openImageFile>> | undefined): Promise<BitmapSource> {
  if (sourceDevice === undefined) return editor.sourceFor(name);
  if (!(sourceDevice instanceof Qcow2Device)) throw new CommandError(`Dirty bitmap '${name}' not found`);
  const state = await loadBitmapState(sourceDevice.image);
  const entry = state.entries.find((e) => e.name === name);
  if (entry === undefined) throw new CommandError(`Dirty bitmap '${name}' not found`);
  if (hasBitmapFlag(entry.flags, BitmapFlag.InUse)) throw new CommandError(`Bitmap '${name}' is inconsistent and cannot be used\nTry block-dirty-bitmap-remove to delete this bitmap from disk`);
  return bitmapSource(sourceDevice.image, entry);
}
