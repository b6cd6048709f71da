import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { FileStorage } from './file-storage.js';

const dir = mkdtempSync(join(tmpdir(), 'qcowkit-speed-storage-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

// The CLI's metadata commands use blocking I/O (no FileHandle, no thread pool), everything else the async path:
// both must behave the same, as the file system sees it.
describe.each([
  ['blocking', true],
  ['async', false],
])('FileStorage, %s I/O', (mode, blocking) => {
  it('creates, writes, reads, sizes, truncates, flushes and closes a file', async () => {
    const name = join(dir, `${mode}.img`);
    writeFileSync(name, 'old contents that create empties');
    const storage = await FileStorage.open(name, { create: true, blocking });
    expect(await storage.size()).toBe(0);
    await storage.write(new Uint8Array([1, 2, 3, 4]), 65536);
    expect(await storage.size()).toBe(65540);
    const back = new Uint8Array(6);
    expect(await storage.read(back, 65535)).toBe(5); // short at the end of the file
    expect([...back]).toEqual([0, 1, 2, 3, 4, 0]);
    await storage.truncate(65538);
    await storage.flush();
    await storage.close();
    await storage.close(); // twice is fine
    expect([...readFileSync(name).subarray(65535)]).toEqual([0, 1, 2]);
    expect(statSync(name).size).toBe(65538);

    const reader = await FileStorage.open(name, { blocking });
    expect(await reader.size()).toBe(65538);
    await expect(reader.write(new Uint8Array(1), 0)).rejects.toMatchObject({ code: 'IO_ERROR' }); // opened read-only
    await reader.close();
  });

  it('gives one typed error for a missing file and for a directory', async () => {
    await expect(FileStorage.open(join(dir, 'missing'), { blocking })).rejects.toMatchObject({ code: 'IO_ERROR', missing: true, message: expect.stringContaining('No such file or directory') });
    await expect(FileStorage.open(dir, { blocking })).rejects.toMatchObject({ code: 'IO_ERROR', missing: false, message: expect.stringContaining('Is a directory') });
  });
});
