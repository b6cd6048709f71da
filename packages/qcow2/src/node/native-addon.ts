/**
 * Loads qcowkit's native helper (packages/qcow2/native: SEEK_DATA/SEEK_HOLE, OFD image locks, copy_file_range),
 * the system calls Node has no binding for. Tried in order: a fresh build from source (native/build/Release,
 * made by native/build.mjs at `npm ci` when a compiler is there), then the copy prebuilt for this platform that
 * ships in the package (native/prebuilt/<platform>-<arch>), else none: every user then takes its pure path
 * (holes read as data, no image locks, read/write copies).
 *
 * QCOWKIT_NATIVE=off forces the pure path; =build or =prebuilt allows only that copy (to test each).
 */
import { createRequire } from 'node:module';

/** The `abi` the addon must report (QCOWKIT_NATIVE_ABI in native/qcowkit-native.c): refuses a stale build. */
export const NATIVE_ABI = 2;

/** An OFD byte lock: 'shared' (F_RDLCK, what qemu's image locks use) or 'exclusive' (F_WRLCK). */
export type OfdLockType = 'shared' | 'exclusive';

/** The native helper's functions (packages/qcow2/native), as loaded by {@link nativeAddon}. */
export interface NativeAddon {
  readonly abi: number;
  /** First data offset at or after `offset`, or -1 when only hole remains (ENXIO). Throws on other errors. */
  seekData(fd: number, offset: number): number;
  /** First hole offset at or after `offset` (end of file counts), or -1 (ENXIO). Throws on other errors. */
  seekHole(fd: number, offset: number): number;
  /** F_OFD_SETLK: true when placed/removed, false when another open file description holds a conflicting lock. */
  ofdSetLock(fd: number, start: number, length: number, type: OfdLockType | 'unlock'): boolean;
  /** F_OFD_GETLK: null when a `type` lock could be placed, else the type of a conflicting lock held elsewhere. */
  ofdGetLock(fd: number, start: number, length: number, type: OfdLockType): OfdLockType | null;
  /** copy_file_range until `length` bytes or the input's end; errors (code EXDEV, ENOSYS, ...) before any byte throw. */
  copyFileRange(fdIn: number, offsetIn: number, fdOut: number, offsetOut: number, length: number): number;
  /** The same on libuv's thread pool. */
  copyFileRangeAsync(fdIn: number, offsetIn: number, fdOut: number, offsetOut: number, length: number): Promise<number>;
}

const FUNCTIONS = ['seekData', 'seekHole', 'ofdSetLock', 'ofdGetLock', 'copyFileRange', 'copyFileRangeAsync'] as const;

// Relative to this module: src/node/native-addon.ts (vitest, tsx) and dist/node/native-addon.js (compiled) both
// sit two levels below packages/qcow2, next to native/.
/** Where a loaded copy of the native helper came from: a build from source, or the copy shipped prebuilt. */
export type NativeSource = 'build' | 'prebuilt';

const CANDIDATES: Record<NativeSource, string> = {
  build: '../../native/build/Release/qcowkit_native.node',
  prebuilt: `../../native/prebuilt/${process.platform}-${process.arch}/qcowkit_native.node`,
};

/** Which copy of the native helper serves this process ({@link nativeStatus}). */
export interface NativeStatus {
  /** Which copy is loaded, or null for the pure path. */
  source: NativeSource | null;
  /** Why no copy (or not the preferred one) is loaded. */
  reason?: string;
}

let loaded: { addon: NativeAddon | null; status: NativeStatus } | undefined;

function tryLoad(path: string): NativeAddon | string {
  try {
    const candidate = createRequire(import.meta.url)(path) as Partial<NativeAddon>;
    const missing = FUNCTIONS.filter((name) => typeof candidate[name] !== 'function');
    if (missing.length > 0) return `it lacks ${missing.join(', ')}`;
    if (candidate.abi !== NATIVE_ABI) return `it is abi ${String(candidate.abi)}, not ${NATIVE_ABI}`;
    return candidate as NativeAddon;
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    return code === 'MODULE_NOT_FOUND' ? 'not found' : (error as Error).message.split('\n')[0]!;
  }
}

function load(): { addon: NativeAddon | null; status: NativeStatus } {
  const wanted = process.env.QCOWKIT_NATIVE;
  if (wanted === 'off' || wanted === '0') return { addon: null, status: { source: null, reason: `QCOWKIT_NATIVE=${wanted}` } };
  const order: NativeSource[] = wanted === 'build' || wanted === 'prebuilt' ? [wanted] : ['build', 'prebuilt'];
  const reasons: string[] = [];
  for (const source of order) {
    const result = tryLoad(CANDIDATES[source]);
    if (typeof result !== 'string') return { addon: result, status: reasons.length > 0 ? { source, reason: reasons.join('; ') } : { source } };
    reasons.push(`${source}: ${result}`);
  }
  return { addon: null, status: { source: null, reason: reasons.join('; ') } };
}

/** The addon, or null where it cannot load (the pure path). Loaded once per process. */
export function nativeAddon(): NativeAddon | null {
  loaded ??= load();
  return loaded.addon;
}

/** Which copy of the addon serves this process, and why not another. */
export function nativeStatus(): NativeStatus {
  loaded ??= load();
  return loaded.status;
}
