import { Command, CommanderError } from 'commander';
import { useBlockingFileIo } from '@qcowkit/qcow2/node';
import { METADATA_COMMANDS, registerCommandsFor } from './commands/catalog.js';
import { reportError } from './output/errors.js';
import { cliVersion } from './output/version.js';

/** qcowkit: qemu-img's subcommands, flags, exit codes and JSON output, on the @qcowkit/qcow2 engine. */
export async function buildProgram(commandName?: string): Promise<Command> {
  const program = new Command('qcowkit')
    .description('Inspect, convert and snapshot qcow2 disk images (qemu-img compatible)')
    .version(cliVersion())
    .showHelpAfterError()
    .exitOverride();
  await registerCommandsFor(program, commandName);
  return program;
}

// `qcowkit map … | head`: a closed pipe ends the output, as for any Unix tool, not with a stack trace.
process.stdout.on('error', (error: NodeJS.ErrnoException) => {
  if (error.code === 'EPIPE') process.exit(0);
  throw error;
});

/**
 * The last line of defence: an error that escaped every await (a rejected promise nobody awaited, an exception
 * thrown from a callback) ends the command like any other error — one line, a non-zero exit — instead of Node's
 * stack trace. The engine is built so this never happens; the kill and hostile-image tests would show it.
 */
function exitOnEscapedError(error: unknown): void {
  process.exitCode = reportError(error);
  process.exit();
}
process.on('unhandledRejection', exitOnEscapedError);
process.on('uncaughtException', exitOnEscapedError);

async function main(argv: string[]): Promise<number> {
  // qemu-img resize takes "-SIZE" to shrink; keep it from being read as an option.
  const last = argv[argv.length - 1];
  if (argv[2] === 'resize' && last !== undefined && /^-\d/.test(last) && !argv.includes('--')) argv = [...argv.slice(0, -1), '--', last];
  try {
    // The command is always the first argument (qemu-img style): only that one is loaded.
    if (argv[2] !== undefined && METADATA_COMMANDS.has(argv[2])) useBlockingFileIo(true);
    const program = await buildProgram(argv[2]);
    await program.parseAsync(argv);
    return process.exitCode === undefined ? 0 : Number(process.exitCode);
  } catch (error) {
    if (error instanceof CommanderError) {
      // --help and --version exit 0; usage errors exit 1 like qemu-img.
      return error.exitCode === 0 ? 0 : 1;
    }
    return reportError(error);
  }
}

main(process.argv).then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    process.exitCode = reportError(error);
  },
);
