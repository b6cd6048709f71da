import { writeFileSync } from 'node:fs';

/**
 * The kill harness's hook (packages/cli/src/test-support/kill-harness.ts), inert unless its variables are set:
 * - QCOWKIT_CRASH_AT_WRITE=N: the process kills itself (SIGKILL) just before its Nth write to a file, so a test
 *   can stop a command at a chosen point of its write sequence (writes and truncates count, in call order);
 * - QCOWKIT_WRITE_COUNT_FILE=path: at exit, the number of writes made is written to `path`, so the harness knows
 *   how many points there are to choose from.
 * Unset, each write costs one comparison.
 */
const crashAt = Number(process.env['QCOWKIT_CRASH_AT_WRITE'] ?? 0) || 0;
const countFile = process.env['QCOWKIT_WRITE_COUNT_FILE'];
let writes = 0;

if (countFile !== undefined && countFile !== '') process.on('exit', () => writeFileSync(countFile, String(writes)));

/** Called by file storage before every write or truncate. */
export function beforeFileWrite(): void {
  writes++;
  if (writes === crashAt) process.kill(process.pid, 'SIGKILL');
}
