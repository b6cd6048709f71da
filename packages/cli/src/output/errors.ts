import { Qcow2Error } from '@qcowkit/qcow2/engine';
import { progressFailed } from './progress.js';

/**
 * Thrown by a command for an error that has its own exit code (qemu-img compare exits 2 on errors, check 1…).
 */
export class CommandError extends Error {
  constructor(
    message: string,
    readonly exitCode = 1,
    readonly file?: string,
  ) {
    super(message);
  }
}

/** Prints a warning the way qemu-img prints one (its words after `qcowkit: warning: `), on stderr. */
export function printWarning(message: string): void {
  process.stderr.write(`qcowkit: warning: ${message}\n`);
}

/**
 * Prints one line `qcowkit: <file>: <message>` and returns the exit code. Stack traces only with
 * QCOWKIT_DEBUG=1: a hostile or broken image is a user-facing condition, not a crash.
 */
export function reportError(error: unknown): number {
  if (process.env.QCOWKIT_DEBUG === '1' && error instanceof Error) process.stderr.write(`${error.stack ?? error.message}\n`);
  let file: string | undefined;
  let message: string;
  let exitCode = 1;
  if (error instanceof Qcow2Error) {
    file = error.file;
    message = error.message;
  } else if (error instanceof CommandError) {
    file = error.file;
    message = error.message;
    exitCode = error.exitCode;
  } else if (error instanceof RangeError && /allocat|Array buffer|memory/i.test(error.message)) {
    message = `out of memory: ${error.message}`;
  } else if (error instanceof Error) {
    message = error.message;
  } else {
    message = String(error);
  }
  const oneLine = message.replace(/\s*\n\s*/g, ' ');
  progressFailed(oneLine);
  process.stderr.write(`qcowkit: ${file === undefined ? '' : `${file}: `}${oneLine}\n`);
  return exitCode;
}
