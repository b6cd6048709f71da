/**
 * Who holds an intent log, told apart from a later process that got the same pid: the pid with its start time
 * (field 22 of /proc/PID/stat, in clock ticks since boot), the boot it ran in, and the host.
 */
import { readFile } from 'node:fs/promises';
import { hostname } from 'node:os';

export interface IntentOwner {
  pid: number;
  /** /proc/PID/stat starttime; '' where there is no /proc. */
  startTime: string;
  /** /proc/sys/kernel/random/boot_id; '' where there is none. */
  bootId: string;
  host: string;
}

async function readOr(path: string, fallback: string): Promise<string> {
  try {
    return (await readFile(path, 'utf8')).trim();
  } catch {
    return fallback;
  }
}

/** A process's start time from /proc/PID/stat (after the command name, which may hold spaces and parentheses). */
async function startTimeOf(pid: number): Promise<string | undefined> {
  const stat = await readOr(`/proc/${pid}/stat`, '');
  if (stat === '') return undefined;
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // Fields after the name start at field 3 (state); starttime is field 22.
  return fields[22 - 3];
}

export async function currentOwner(): Promise<IntentOwner> {
  return {
    pid: process.pid,
    startTime: (await startTimeOf(process.pid)) ?? '',
    bootId: await readOr('/proc/sys/kernel/random/boot_id', ''),
    host: hostname(),
  };
}

/** Whether a process with this pid exists (EPERM: it does, someone else's). */
export function pidExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** alive: that very process runs; dead: it does not; unknown: it ran on another host. */
export async function ownerStatus(owner: IntentOwner): Promise<'alive' | 'dead' | 'unknown'> {
  const me = await currentOwner();
  if (owner.host !== me.host) return 'unknown';
  if (owner.bootId !== '' && me.bootId !== '' && owner.bootId !== me.bootId) return 'dead';
  if (!Number.isSafeInteger(owner.pid) || owner.pid <= 0 || !pidExists(owner.pid)) return 'dead';
  if (owner.startTime === '') return 'alive';
  const startTime = await startTimeOf(owner.pid);
  return startTime === undefined || startTime === owner.startTime ? 'alive' : 'dead';
}
