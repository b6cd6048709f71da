/**
 * Child process for the commit/rebase crash tests: runs one operation on image files and, when told, kills
 * itself with SIGKILL just before its Nth write (or truncate) reaches any file, so a test can stop it at every
 * step of the operation, deterministically. Without a count it runs to the end (a parent may kill it at a
 * random time instead).
 *
 *   chain-op-runner.ts commit FILE [BASE|-] KILL_AT
 *   chain-op-runner.ts rebase FILE BACKING FORMAT KILL_AT      (BACKING '' = none)
 *
 * Prints "ready" when the operation starts and "done WRITES" when it finished, WRITES being how many writes it
 * made (so a test knows the range to kill in).
 */
import type { HostFiles } from '../device/host-files.js';
import type { Storage } from '../io/storage.js';
import { nodeCodecs, nodeHostFiles } from '../node/index.js';
import { commitImage } from '../ops/commit.js';
import { rebaseImage } from '../ops/rebase.js';

const [op, file, third, fourth, fifth] = process.argv.slice(2);
const killAt = Number(op === 'commit' ? fourth : fifth);
let writes = 0;

function beforeWrite(): void {
  writes++;
  if (killAt > 0 && writes === killAt) process.kill(process.pid, 'SIGKILL');
}

function counted(storage: Storage): Storage {
  return new Proxy(storage, {
    get(target, property, receiver) {
      if (property === 'write') {
        return async (buffer: Uint8Array, offset: number) => {
          beforeWrite();
          return target.write(buffer, offset);
        };
      }
      if (property === 'truncate') {
        return async (size: number) => {
          beforeWrite();
          return target.truncate(size);
        };
      }
      const value = Reflect.get(target, property, receiver) as unknown;
      return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
    },
  });
}

const hostFiles: HostFiles = {
  open: async (name, options) => counted(await nodeHostFiles.open(name, options)),
  canonical: (name) => nodeHostFiles.canonical!(name),
};

process.stdout.write('ready\n');
if (op === 'commit') {
  await commitImage(file!, { hostFiles, codecs: nodeCodecs, ...(third === undefined || third === '-' ? {} : { base: third }) });
} else if (op === 'rebase') {
  await rebaseImage(file!, {
    hostFiles,
    codecs: nodeCodecs,
    backing: third ?? '',
    ...(third ? { backingFormat: fourth as 'raw' | 'qcow2' } : {}),
  });
} else {
  throw new Error(`unknown operation ${op}`);
}
process.stdout.write(`done ${writes}\n`);
