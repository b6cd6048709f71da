/**
 * Calls a killed run left in flight. When `vm snapshot` dies, a virsh it was running lives on until libvirt
 * answers it (a snapshot being created, a job being started or aborted), and libvirt finishes the call even
 * when virsh dies too. Recovery first waits for those virsh processes to end, so that it reads the domain after
 * their changes, not before. Found through /proc (Linux): processes named virsh that name the domain.
 */
import { readdir, readFile } from 'node:fs/promises';
import { basename } from 'node:path';

async function virshPidsFor(domain: string): Promise<number[]> {
  let entries: string[];
  try {
    entries = await readdir('/proc');
  } catch {
    return [];
  }
  const wanted = `--domain=${domain}`;
  const pids: number[] = [];
  for (const entry of entries) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    let args: string[];
    try {
      args = (await readFile(`/proc/${entry}/cmdline`, 'latin1')).split('\0');
    } catch {
      continue; // gone meanwhile, or not ours to read
    }
    if (basename(args[0] ?? '') === 'virsh' && args.includes(wanted)) pids.push(Number(entry));
  }
  return pids;
}

/** Waits (up to `timeoutMs`) until no virsh process works on `domain`; returns the pids still running then. */
export async function waitForCallsInFlight(domain: string, timeoutMs: number): Promise<number[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const pids = await virshPidsFor(domain);
    if (pids.length === 0 || Date.now() >= deadline) return pids;
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}
