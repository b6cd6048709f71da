import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { qemuImg } from '../../../../fixtures/corpus.js';

/** The built CLI (npm test builds before running vitest). */
export const CLI_MAIN = fileURLToPath(new URL('../../dist/main.js', import.meta.url));

/** What a command printed and how it ended. */
export interface Run {
  stdout: string;
  stderr: string;
  status: number;
}

export interface CliResult extends Run {
  ms: number;
}

/** Runs `qcowkit ARGS` as a separate process, as a user would. */
export function runCli(args: string[], options: { cwd?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): CliResult {
  const started = Date.now();
  const r = spawnSync(process.execPath, [CLI_MAIN, ...args], {
    cwd: options.cwd,
    env: options.env ?? process.env,
    encoding: 'utf8',
    timeout: options.timeoutMs ?? 120_000,
    maxBuffer: 64 * 1024 * 1024,
  });
  if (r.error && r.signal === null) throw r.error;
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr, ms: Date.now() - started };
}

/** `qcowkit ARGS` in `cwd`: the side of a comparison with qemu-img. */
export function qcowkit(args: string[], cwd: string, env: NodeJS.ProcessEnv = process.env): Run {
  const { stdout, stderr, status } = runCli(args, { cwd, env });
  return { stdout, stderr, status };
}

/** `qemu-img ARGS` in `cwd`: the referee. */
export function qemu(args: string[], cwd: string): Run {
  const r = qemuImg(args, { cwd });
  return { stdout: r.stdout, stderr: r.stderr, status: r.status };
}
