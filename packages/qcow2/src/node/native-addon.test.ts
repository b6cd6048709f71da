/**
 * The native helper itself, both copies of it: the one built from source at install time (native/build) and the
 * one prebuilt for linux-x64 that ships in the package (native/prebuilt). Each must load, report its abi, and
 * do what the system calls do: OFD locks checked against the kernel's own view (/proc/locks) and against a real
 * qemu-io, copy_file_range checked byte for byte. And QCOWKIT_NATIVE=off must give the pure path.
 */
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { hasQemuIo, isCI, qemuImg } from '../../../../fixtures/corpus.js';
import { heldLockBytes, QemuIoHolder } from '../test-support/qemu-io-holder.js';
import { isCopyFallback } from './copy-file-range.js';
import { NATIVE_ABI, nativeStatus, type NativeAddon } from './native-addon.js';

const nativeDir = fileURLToPath(new URL('../../native/', import.meta.url));
const copies = {
  build: join(nativeDir, 'build/Release/qcowkit_native.node'),
  prebuilt: join(nativeDir, `prebuilt/${process.platform}-${process.arch}/qcowkit_native.node`),
};
const linuxX64 = process.platform === 'linux' && process.arch === 'x64';

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'qcowkit-lock-native-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

it('ships a prebuilt copy for linux-x64 inside the package, and loads one copy here', () => {
  expect(existsSync(join(nativeDir, 'prebuilt/linux-x64/qcowkit_native.node'))).toBe(true);
  const pkg = JSON.parse(readFileSync(join(nativeDir, '../package.json'), 'utf8')) as { files: string[] };
  expect(pkg.files).toContain('native/prebuilt');
  if (linuxX64 || isCI()) expect(nativeStatus().source).not.toBeNull();
});

it("the prebuilt linux-x64 copy needs no glibc newer than Debian 12's", () => {
  // The version needs are plain strings in the ELF's .gnu.version_r section.
  const binary = readFileSync(join(nativeDir, 'prebuilt/linux-x64/qcowkit_native.node')).toString('latin1');
  const versions = [...new Set(binary.match(/GLIBC_2\.\d+(\.\d+)?/g) ?? [])];
  expect(versions.length).toBeGreaterThan(0);
  const minor = (v: string): number => Number(v.split('.')[1]);
  expect(Math.max(...versions.map(minor)), versions.join(' ')).toBeLessThanOrEqual(36);
});

const present = Object.entries(copies).filter(([, path]) => existsSync(path));

describe.each(present)('the %s copy', (_source, path) => {
  const addon = createRequire(import.meta.url)(path) as NativeAddon;
  const file = (): string => join(dir, `${_source}-${randomBytes(4).toString('hex')}.img`);

  it('reports the abi the loader expects and has every function', () => {
    expect(addon.abi).toBe(NATIVE_ABI);
    for (const name of ['seekData', 'seekHole', 'ofdSetLock', 'ofdGetLock', 'copyFileRange', 'copyFileRangeAsync'] as const) {
      expect(typeof addon[name]).toBe('function');
    }
  });

  it('takes OFD locks that another open of the file sees, and the kernel lists as OFDLCK', () => {
    const name = file();
    writeFileSync(name, Buffer.alloc(4096));
    const a = openSync(name, 'r');
    const b = openSync(name, 'r');
    try {
      expect(addon.ofdSetLock(a, 100, 1, 'shared')).toBe(true);
      expect(heldLockBytes(name)).toEqual([100]);
      // Another open file description of the same process conflicts with an exclusive request only.
      expect(addon.ofdGetLock(b, 100, 1, 'exclusive')).toBe('shared');
      expect(addon.ofdGetLock(b, 100, 1, 'shared')).toBeNull();
      expect(addon.ofdGetLock(b, 101, 1, 'exclusive')).toBeNull();
      // The holder's own locks never conflict with itself.
      expect(addon.ofdGetLock(a, 100, 1, 'exclusive')).toBeNull();
      expect(addon.ofdSetLock(b, 100, 1, 'shared')).toBe(true);
      // An exclusive lock needs a descriptor open for writing.
      expect(() => addon.ofdSetLock(a, 150, 2, 'exclusive')).toThrow(expect.objectContaining({ code: 'EBADF' }));
    } finally {
      closeSync(a);
      closeSync(b);
    }
    expect(heldLockBytes(name)).toEqual([]);
  });

  it('refuses a lock another open holds exclusively (false, not an exception), and unlocks', () => {
    const name = file();
    writeFileSync(name, Buffer.alloc(4096));
    const a = openSync(name, 'r+');
    const b = openSync(name, 'r+');
    try {
      expect(addon.ofdSetLock(a, 150, 2, 'exclusive')).toBe(true);
      expect(addon.ofdGetLock(b, 151, 1, 'shared')).toBe('exclusive');
      expect(addon.ofdSetLock(b, 151, 1, 'shared')).toBe(false);
      expect(addon.ofdSetLock(a, 150, 2, 'unlock')).toBe(true);
      expect(addon.ofdSetLock(b, 151, 1, 'shared')).toBe(true);
      expect(heldLockBytes(name)).toEqual([151]);
    } finally {
      closeSync(a);
      closeSync(b);
    }
  });

  it('sees the locks a real qemu-io holds: bytes 100-101, 103, 201, 203', async (context) => {
    if (!hasQemuIo()) {
      if (isCI()) throw new Error('qemu-io is missing on CI');
      return context.skip();
    }
    const name = file();
    qemuImg(['create', '-q', '-f', 'qcow2', name, '1M']);
    const holder = await QemuIoHolder.start(name);
    const fd = openSync(name, 'r');
    try {
      const seen = [100, 101, 102, 103, 200, 201, 202, 203].filter((byte) => addon.ofdGetLock(fd, byte, 1, 'exclusive') !== null);
      expect(seen).toEqual([100, 101, 103, 201, 203]);
      expect(heldLockBytes(name)).toEqual(seen);
    } finally {
      closeSync(fd);
      await holder.release();
    }
  });

  it('throws errno errors with their code, and checks its arguments', () => {
    expect(() => addon.ofdSetLock(987654, 100, 1, 'shared')).toThrow(expect.objectContaining({ code: 'EBADF' }));
    expect(() => addon.ofdGetLock(987654, 100, 1, 'shared')).toThrow(expect.objectContaining({ code: 'EBADF' }));
    expect(() => addon.ofdSetLock(0, -1, 1, 'shared')).toThrow(RangeError);
    expect(() => addon.ofdSetLock(0, 100, 1, 'bogus' as 'shared')).toThrow(TypeError);
    expect(() => addon.ofdGetLock(0, 100, 1, 'unlock' as 'shared')).toThrow(TypeError);
    expect(() => (addon.copyFileRange as (...a: unknown[]) => number)(0, 0, 1)).toThrow(TypeError);
    expect(() => addon.copyFileRange(1.5, 0, 1, 0, 1)).toThrow(RangeError);
    expect(() => addon.seekData(0, 2 ** 60)).toThrow(RangeError);
  });

  it('copies a range between files in the kernel, positionally, short at the end of the input', async () => {
    const source = randomBytes(1 << 20);
    const from = file();
    const to = file();
    writeFileSync(from, source);
    writeFileSync(to, Buffer.alloc(64 * 1024, 0xee));
    const fdIn = openSync(from, 'r');
    const fdOut = openSync(to, 'r+');
    try {
      expect(addon.copyFileRange(fdIn, 4096, fdOut, 8192, 300 * 1024)).toBe(300 * 1024);
      expect(await addon.copyFileRangeAsync(fdIn, (1 << 20) - 1000, fdOut, 400 * 1024, 4096)).toBe(1000);
      expect(addon.copyFileRange(fdIn, 1 << 20, fdOut, 0, 4096)).toBe(0);
    } finally {
      closeSync(fdIn);
      closeSync(fdOut);
    }
    const result = readFileSync(to);
    expect(result.subarray(0, 8192).every((b) => b === 0xee)).toBe(true);
    expect(result.subarray(8192, 8192 + 300 * 1024).equals(source.subarray(4096, 4096 + 300 * 1024))).toBe(true);
    expect(result.subarray(400 * 1024, 400 * 1024 + 1000).equals(source.subarray((1 << 20) - 1000))).toBe(true);
    expect(result.length).toBe(400 * 1024 + 1000);
  });

  it('reports why a copy cannot be done in the kernel as a code, sync and async', async () => {
    const from = file();
    writeFileSync(from, randomBytes(8192));
    const fdIn = openSync(from, 'r');
    const fdOut = openSync(from, 'r');
    try {
      // An output opened read-only: EBADF, a real error (not a fallback).
      expect(() => addon.copyFileRange(fdIn, 0, fdOut, 0, 4096)).toThrow(expect.objectContaining({ code: 'EBADF' }));
      await expect(addon.copyFileRangeAsync(fdIn, 0, fdOut, 0, 4096)).rejects.toMatchObject({ code: 'EBADF' });
      expect(isCopyFallback({ code: 'EBADF' })).toBe(false);
    } finally {
      closeSync(fdIn);
      closeSync(fdOut);
    }
    // Overlapping ranges of one file: EINVAL, the "copy it yourself" signal.
    const same = openSync(from, 'r+');
    try {
      let error: unknown;
      try {
        addon.copyFileRange(same, 0, same, 100, 4096);
      } catch (e) {
        error = e;
      }
      expect(error).toMatchObject({ code: 'EINVAL' });
      expect(isCopyFallback(error)).toBe(true);
    } finally {
      closeSync(same);
    }
  });
});

describe('QCOWKIT_NATIVE', () => {
  it('=off gives the pure path: no addon, no locking, copies refused with ENOSYS', async () => {
    vi.resetModules();
    process.env.QCOWKIT_NATIVE = 'off';
    try {
      const native = await import('./native-addon.js');
      const locks = await import('./image-locks.js');
      const copy = await import('./copy-file-range.js');
      expect(native.nativeAddon()).toBeNull();
      expect(native.nativeStatus()).toEqual({ source: null, reason: 'QCOWKIT_NATIVE=off' });
      expect(locks.lockingSupport()).toBe('off');
      expect(copy.kernelCopySupported()).toBe(false);
      const error = await copy.copyFileRange(0, 0, 1, 0, 1).catch((e: unknown) => e);
      expect(error).toMatchObject({ code: 'ENOSYS' });
      expect(copy.isCopyFallback(error)).toBe(true);
    } finally {
      delete process.env.QCOWKIT_NATIVE;
      vi.resetModules();
    }
  });

  it.runIf(existsSync(copies.prebuilt))('=prebuilt loads the shipped copy', async () => {
    vi.resetModules();
    process.env.QCOWKIT_NATIVE = 'prebuilt';
    try {
      const native = await import('./native-addon.js');
      expect(native.nativeStatus().source).toBe('prebuilt');
      expect(native.nativeAddon()?.abi).toBe(NATIVE_ABI);
    } finally {
      delete process.env.QCOWKIT_NATIVE;
      vi.resetModules();
    }
  });
});
