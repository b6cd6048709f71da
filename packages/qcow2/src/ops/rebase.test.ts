import { describe, expect, it } from 'vitest';
import { isWritable } from '../device/block-device.js';
import { openImage } from '../device/open-image.js';
import { createQcow2 } from '../engine/create-image.js';
import { MemoryFiles } from '../test-support/memory-files.js';
import { rebaseImage } from './rebase.js';

const MiB = 1024 * 1024;
const SIZE = 8 * MiB;

async function write(files: MemoryFiles, name: string, offset: number, length: number, value: number): Promise<void> {
  const device = await openImage(name, { hostFiles: files, writable: true });
  try {
    if (!isWritable(device)) throw new Error('not writable');
    await device.write(new Uint8Array(length).fill(value), offset);
  } finally {
    await device.close();
  }
}

async function view(files: MemoryFiles, name: string): Promise<Uint8Array> {
  const device = await openImage(name, { hostFiles: files });
  try {
    const out = new Uint8Array(device.size);
    await device.read(out, 0);
    return out;
  } finally {
    await device.close();
  }
}

/** base (6 MiB of data) <- a, b (siblings, 64 KiB each) ; top <- a. */
async function siblings(): Promise<MemoryFiles> {
  const files = new MemoryFiles();
  await createQcow2(files.add('base.qcow2'), { size: SIZE });
  await write(files, 'base.qcow2', 0, 6 * MiB, 0x11);
  for (const name of ['a.qcow2', 'b.qcow2']) await createQcow2(files.add(name), { size: SIZE, backingFile: 'base.qcow2', backingFormat: 'qcow2' });
  await write(files, 'a.qcow2', 1 * MiB, 64 * 1024, 0xaa);
  await write(files, 'b.qcow2', 5 * MiB, 64 * 1024, 0xbb);
  await createQcow2(files.add('top.qcow2'), { size: SIZE, backingFile: 'a.qcow2', backingFormat: 'qcow2' });
  await write(files, 'top.qcow2', 3 * MiB, 64 * 1024, 0x77);
  return files;
}

describe('rebaseImage', () => {
  it('onto a sibling sharing a base: compares only what lies above the shared base, copies what differs', async () => {
    const files = await siblings();
    const before = await view(files, 'top.qcow2');
    const result = await rebaseImage('top.qcow2', { hostFiles: files, backing: 'b.qcow2', backingFormat: 'qcow2' });
    expect(Buffer.from(await view(files, 'top.qcow2')).equals(Buffer.from(before))).toBe(true);
    // a's 64 KiB and b's 64 KiB differ from each other's view; the 6 MiB of base are never read.
    expect(result.comparedBytes).toBe(128 * 1024);
    expect(result.copiedBytes).toBe(128 * 1024);
  });

  it('onto a deeper image of the chain: only the layers in between are compared', async () => {
    const files = await siblings();
    const before = await view(files, 'top.qcow2');
    const result = await rebaseImage('top.qcow2', { hostFiles: files, backing: 'base.qcow2', backingFormat: 'qcow2' });
    expect(Buffer.from(await view(files, 'top.qcow2')).equals(Buffer.from(before))).toBe(true);
    expect(result.comparedBytes).toBe(64 * 1024);
  });

  it('onto the backing file it already has: nothing compared, only the reference rewritten', async () => {
    const files = await siblings();
    const result = await rebaseImage('top.qcow2', { hostFiles: files, backing: 'a.qcow2', backingFormat: 'qcow2' });
    expect(result).toEqual({ comparedBytes: 0, copiedBytes: 0 });
  });

  it('-b "": ranges that read as zeros in both chains are not read', async () => {
    const files = await siblings();
    const before = await view(files, 'top.qcow2');
    const result = await rebaseImage('top.qcow2', { hostFiles: files, backing: '' });
    expect(Buffer.from(await view(files, 'top.qcow2')).equals(Buffer.from(before))).toBe(true);
    // What base and a show under top (6 MiB), not the 2 MiB of zeros after it.
    expect(result.comparedBytes).toBe(6 * MiB - 64 * 1024);
  });
});
