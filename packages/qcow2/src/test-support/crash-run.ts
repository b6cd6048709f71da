import { Qcow2Device } from '../device/qcow2-device.js';
import { openImage } from '../device/open-image.js';
import { MemoryStorage } from '../io/memory-storage.js';
import { CrashStorage, Crashed } from './crash-storage.js';

/**
 * Runs an operation on an in-memory copy of an image whose storage "crashes" before its `survivingWrites`+1-th
 * write (see CrashStorage): what is left is what a process killed there leaves. The operation gets `reopen`,
 * which opens the image for writing as many times as it likes (all opens share the crashing storage, so the
 * write count spans them). Other files (a backing chain) are served read-only from `others`.
 */
export async function runWithCrash(
  bytes: Uint8Array,
  op: (reopen: () => Promise<Qcow2Device>) => Promise<unknown>,
  survivingWrites: number,
  others: Record<string, Uint8Array> = {},
): Promise<{ bytes: Uint8Array; writes: number; crashed: boolean }> {
  const memory = new MemoryStorage(bytes.slice(), { name: 'disk.qcow2' });
  const storage = new CrashStorage(memory, survivingWrites);
  const hostFiles = {
    open: async (name: string) => {
      const base = name.split('/').pop()!;
      if (base === 'disk.qcow2') return storage;
      const other = others[base];
      if (other === undefined) throw new Error(`no file ${name}`);
      return new MemoryStorage(other, { name: base, readOnly: true });
    },
  };
  const reopen = async (): Promise<Qcow2Device> => {
    const device = await openImage('disk.qcow2', { hostFiles, writable: true, cache: 'unsafe' });
    if (!(device instanceof Qcow2Device)) throw new Error('not qcow2');
    return device;
  };
  let crashed = false;
  try {
    await op(reopen);
  } catch (error) {
    if (!(error instanceof Crashed)) throw error;
    crashed = true;
  }
  return { bytes: memory.contents().slice(), writes: storage.writes, crashed };
}

/** Crash points to try: all of them when few, else an even spread plus the last few. */
export function crashPoints(writes: number, spread = 24): number[] {
  if (writes <= spread) return Array.from({ length: writes }, (_, i) => i);
  const points = new Set<number>();
  for (let i = 0; i < spread; i++) points.add(Math.floor((i * writes) / spread));
  for (let i = Math.max(0, writes - 8); i < writes; i++) points.add(i);
  return [...points].sort((a, b) => a - b);
}
