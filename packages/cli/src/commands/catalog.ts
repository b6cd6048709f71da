import type { Command } from 'commander';

type Register = (program: Command) => void;

/**
 * Every command, in the order `--help` lists them, each behind a dynamic import: a run loads only the command
 * it names (and what that command imports), so `qcowkit info` does not pay for convert, check or the VM flows.
 * Start-up is most of the time of a metadata command (issue 10).
 */
export const COMMAND_LOADERS: ReadonlyArray<readonly [name: string, load: () => Promise<Register>]> = [
  ['create', async () => (await import('./create.js')).registerCreate],
  ['info', async () => (await import('./info.js')).registerInfo],
  ['map', async () => (await import('./map.js')).registerMap],
  ['compare', async () => (await import('./compare.js')).registerCompare],
  ['convert', async () => (await import('./convert.js')).registerConvert],
  ['resize', async () => (await import('./resize.js')).registerResize],
  ['snapshot', async () => (await import('./snapshot.js')).registerSnapshot],
  ['io', async () => (await import('./io.js')).registerIo],
  ['measure', async () => (await import('./measure.js')).registerMeasure],
  ['commit', async () => (await import('./commit.js')).registerCommit],
  ['rebase', async () => (await import('./rebase.js')).registerRebase],
  ['chain', async () => (await import('./chain.js')).registerChain],
  // The demo runs other commands in this process: it gets the catalog's registration instead of importing it.
  ['demo', async () => {
    const { registerDemo } = await import('./demo.js');
    return (program) => registerDemo(program, registerCommandsFor);
  }],
  ['check', async () => (await import('./check.js')).registerCheck],
  ['dd', async () => (await import('./dd.js')).registerDd],
  ['amend', async () => (await import('./amend.js')).registerAmend],
  ['bitmap', async () => (await import('./bitmap.js')).registerBitmap],
  ['vm', async () => (await import('./vm.js')).registerVm],
  ['inspect', async () => (await import('./inspect.js')).registerInspect],
];

/**
 * Commands that read and write metadata one table at a time: their file I/O is blocking (pread/pwrite on the
 * main thread), which skips a round trip through libuv's thread pool per table (a check of a 200 GiB image reads
 * 800 tables). Bulk copies (convert, dd, compare, commit, rebase) keep async I/O, with reads in flight.
 */
export const METADATA_COMMANDS: ReadonlySet<string> = new Set(['create', 'info', 'map', 'resize', 'snapshot', 'measure', 'chain', 'check', 'amend']);

/**
 * Registers the command `argv[2]` names, or all of them when it names none (help, --version, a typo: commander
 * then lists or suggests from the full set).
 */
export async function registerCommandsFor(program: Command, commandName: string | undefined): Promise<void> {
  const one = COMMAND_LOADERS.find(([name]) => name === commandName);
  const selected = one === undefined ? COMMAND_LOADERS : [one];
  const registers = await Promise.all(selected.map(([, load]) => load()));
  for (const register of registers) register(program);
}
