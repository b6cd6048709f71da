import type { Command } from 'commander';

/** What a long operation tells its progress reporter. */
export interface ProgressReporter {
  update: (done: number, total: number) => void;
  finish: () => void;
}

/**
 * qemu-img's -p progress line: "    (NN.NN/100%)" rewritten in place with a carriage return, on stdout, printed
 * only when the percentage moves by at least 1% (as qemu does), and finished with a newline.
 */
export function progressPrinter(enabled: boolean, out: NodeJS.WritableStream = process.stdout): ProgressReporter {
  let last = -1;
  const print = (percent: number): void => {
    out.write(`    (${percent.toFixed(2)}/100%)\r`);
  };
  // qemu-img shows 0.00% as soon as the operation starts.
  if (enabled) {
    last = 0;
    print(0);
  }
  return {
    update(done, total) {
      if (!enabled) return;
      const percent = total === 0 ? 100 : (done / total) * 100;
      if (last < 0 || percent - last >= 1 || (percent === 100 && last !== 100)) {
        last = percent;
        print(percent);
      }
    },
    finish() {
      if (!enabled) return;
      if (last !== 100) print(100);
      out.write('\n');
    },
  };
}

/**
 * The progress stream for programs (--progress=json): one JSON object per line on stderr, so stdout keeps the
 * command's own output (or the image, for `convert … -`). The format is stable:
 *
 *   {"operation":"convert","status":"running","done":0,"total":1073741824,"percent":0}     (first report)
 *   {"operation":"convert","status":"running","done":10737418,"total":1073741824,"percent":1}
 *   …
 *   {"operation":"convert","status":"done","done":1073741824,"total":1073741824,"percent":100}
 *
 * or, when the command fails, a last line {"operation":…,"status":"failed","error":"<the message>"} before the
 * usual "qcowkit: …" error line. done and total count the operation's work in bytes (guest bytes for convert,
 * compare, commit, rebase, dd; for convert to a pipe, the source planned then the image written; hundredths of
 * its steps for amend); total may grow while the work is
 * discovered. percent has at most two decimals; a line is written when it moves by a whole percent, so at most
 * about a hundred lines per operation.
 */
export function jsonProgress(operation: string): ProgressReporter {
  let lastPercent = -1;
  let lastDone = 0;
  let lastTotal = 0;
  const emit = (status: 'running' | 'done', done: number, total: number, percent: number): void => {
    process.stderr.write(`${JSON.stringify({ operation, status, done, total, percent })}\n`);
  };
  const reporter: ProgressReporter & { fail: (message: string) => void } = {
    update(done, total) {
      lastDone = done;
      lastTotal = total;
      const percent = total === 0 ? 100 : Math.min(100, Math.floor((done / total) * 10000) / 100);
      if (lastPercent < 0 || Math.floor(percent) > Math.floor(lastPercent)) {
        lastPercent = percent;
        emit('running', done, total, percent);
      }
    },
    finish() {
      if (active === reporter) active = undefined;
      const total = Math.max(lastDone, lastTotal);
      emit('done', total, total, 100);
    },
    fail(message) {
      process.stderr.write(`${JSON.stringify({ operation, status: 'failed', error: message })}\n`);
    },
  };
  active = reporter;
  return reporter;
}

/** The JSON reporter of the command running now, told when the command fails (see reportError). */
let active: { fail: (message: string) => void } | undefined;

/** Called by the error reporter: the program reading the JSON stream sees a last "failed" line. */
export function progressFailed(message: string): void {
  active?.fail(message);
  active = undefined;
}

/** The flags addProgressOptions adds (-p, --progress=FORMAT) and -q. */
export interface ProgressFlags {
  p?: boolean;
  progress?: string;
  quiet?: boolean;
}

/**
 * Adds qemu-img's -p (human progress on stdout) and --progress=human|json. -p stays a plain flag (qemu-img
 * scripts write `compare -p a b`), so the format is a separate long option that always takes a value.
 */
export function addProgressOptions(command: Command, what = 'show progress'): Command {
  return command
    .option('-p', `${what} (qemu-img's progress line on stdout)`)
    .option('--progress <format>', `${what}: human (as -p) or json (one JSON object per line on stderr, for programs)`);
}

/**
 * The reporter the flags ask for: JSON when --progress=json (even with -q: a program asked for it), qemu-img's
 * line with -p or --progress=human unless -q, otherwise nothing.
 */
export function progressReporter(operation: string, flags: ProgressFlags, stdoutTaken = false): ProgressReporter {
  const format = flags.progress;
  if (format !== undefined && format !== 'human' && format !== 'json') {
    throw new Error(`Invalid progress format '${format}' (expected human or json)`);
  }
  if (format === 'json') return jsonProgress(operation);
  // When stdout carries the command's data (convert … -), the human line goes to stderr.
  return progressPrinter((flags.p === true || format === 'human') && !flags.quiet, stdoutTaken ? process.stderr : process.stdout);
}
