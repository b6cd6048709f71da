/**
 * Running virsh: always an argument array through execFile (never a shell), in the C locale so libvirt's messages
 * are the English ones the error mapping knows, and `error: …` lines turned into HypervisorError codes.
 */
import { execFile } from 'node:child_process';
import { HypervisorError, type HypervisorErrorCode } from '../errors.js';

export interface VirshResult {
  stdout: string;
  stderr: string;
  /** The exit status; null when the process was killed by a signal. */
  exitCode: number | null;
}

/** Runs virsh with these arguments (after the program name) and returns what it printed. Never throws for a non-zero exit. */
export type VirshRunner = (args: readonly string[]) => Promise<VirshResult>;

/** The real runner: `virsh ARGS` with execFile. */
export function execFileRunner(program = 'virsh'): VirshRunner {
  return (args) =>
    new Promise((resolve, reject) => {
      execFile(
        program,
        [...args],
        { env: { ...process.env, LC_ALL: 'C', LANG: 'C', LANGUAGE: 'C' }, maxBuffer: 64 * 1024 * 1024, encoding: 'utf8' },
        (error, stdout, stderr) => {
          if (error !== null && typeof error.code === 'string') {
            // Could not run at all (ENOENT, EACCES…): not an answer from virsh.
            reject(
              new HypervisorError(error.code === 'ENOENT' ? 'VIRSH_NOT_FOUND' : 'FAILED', `cannot run ${program}: ${error.message}${error.code === 'ENOENT' ? ' (install libvirt-clients)' : ''}`, {
                command: [program, ...args],
                cause: error,
              }),
            );
            return;
          }
          const exitCode = error === null ? 0 : typeof error.code === 'number' ? error.code : null;
          resolve({ stdout, stderr, exitCode });
        },
      );
    });
}

/**
 * libvirt's error prefixes (virErrorMsg, English) and virsh's own messages, mapped to codes. The first match
 * wins, so the more specific come first: "argument unsupported: QEMU guest agent is not configured" is about
 * the agent, not an unsupported flag.
 */
const ERROR_PATTERNS: Array<[RegExp, HypervisorErrorCode]> = [
  [/guest agent is not (configured|connected|responding|available)|Guest agent is not responding|Guest agent not available|agent is not (configured|connected)/i, 'AGENT_UNAVAILABLE'],
  [/failed to connect to the hypervisor|Failed to connect socket|authentication failed|no connection driver available/i, 'CONNECT_FAILED'],
  [/Domain not found|failed to get domain/i, 'NO_DOMAIN'],
  [/does not have an active block job|No active block job|no block job/i, 'NO_BLOCK_JOB'],
  [/Timed out during operation|cannot acquire state change lock/i, 'TIMEOUT'],
  [/doesn't support option|unknown command|Operation not supported|argument unsupported|unsupported flags|this function is not supported/i, 'UNSUPPORTED'],
  [/Requested operation is not valid/i, 'OPERATION_INVALID'],
];

export function errorCodeOf(message: string): HypervisorErrorCode {
  for (const [pattern, code] of ERROR_PATTERNS) if (pattern.test(message)) return code;
  return 'FAILED';
}

/**
 * The error a failed virsh run stands for. virsh prints one or more `error: ` lines on stderr (its own context
 * first, then libvirt's message); block job waits (`--wait`) end with "Copy failed" / "Commit aborted" on stdout.
 */
export function virshError(args: readonly string[], result: VirshResult): HypervisorError {
  const errorLines = result.stderr
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line.startsWith('error:'))
    .map((line) => line.slice('error:'.length).trim())
    .filter((line) => line !== '');
  const command = ['virsh', ...args];
  if (errorLines.length > 0) {
    const message = errorLines.join(': ');
    return new HypervisorError(errorCodeOf(message), message, { command });
  }
  const stdoutLast = result.stdout.trim().split('\n').pop()?.trim() ?? '';
  const stderr = result.stderr.trim();
  if (/\b(failed|aborted|canceled)\b/i.test(stdoutLast) && /(Copy|Commit|Pull|Block)/i.test(stdoutLast)) {
    return new HypervisorError('BLOCK_JOB_FAILED', `${args[0] ?? 'virsh'}: ${stdoutLast}`, { command });
  }
  const detail = stderr !== '' ? stderr : stdoutLast !== '' ? stdoutLast : `exit status ${result.exitCode ?? 'signal'}`;
  return new HypervisorError(errorCodeOf(detail), `${args[0] ?? 'virsh'} failed: ${detail}`, { command });
}

/** `virsh blockjob --raw`: " type=Block Copy\n bandwidth=0\n cur=65536\n end=65536"; empty when no job runs. */
export function parseBlockJobRaw(stdout: string): { type: string; cur: number; end: number; bandwidth: number } | undefined {
  const fields = new Map<string, string>();
  for (const line of stdout.split('\n')) {
    const match = /^\s*([a-z_]+)=(.*)$/.exec(line);
    if (match) fields.set(match[1]!, match[2]!.trim());
  }
  if (fields.size === 0) return undefined;
  const number = (key: string): number => {
    const text = fields.get(key);
    const value = text === undefined ? Number.NaN : Number(text);
    if (!Number.isSafeInteger(value) || value < 0) throw new HypervisorError('BAD_OUTPUT', `virsh blockjob --raw: bad ${key} '${text ?? ''}'`);
    return value;
  };
  const type = fields.get('type');
  if (type === undefined) throw new HypervisorError('BAD_OUTPUT', `virsh blockjob --raw: no job type in '${stdout.trim()}'`);
  return { type, cur: number('cur'), end: number('end'), bandwidth: fields.has('bandwidth') ? number('bandwidth') : 0 };
}

/** `virsh dominfo`: "Key:   value" lines. */
export function parseColonFields(stdout: string): Map<string, string> {
  const fields = new Map<string, string>();
  for (const line of stdout.split('\n')) {
    const match = /^([A-Za-z][A-Za-z ()-]*):\s*(.*)$/.exec(line);
    if (match) fields.set(match[1]!.trim(), match[2]!.trim());
  }
  return fields;
}

/** virsh's --diskspec is comma separated; a comma inside a file name is written twice. */
export function escapeDiskspecValue(value: string): string {
  return value.replace(/,/g, ',,');
}
