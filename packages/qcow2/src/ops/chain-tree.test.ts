import { posix } from 'node:path';
import { describe, expect, it } from 'vitest';
import { createQcow2 } from '../engine/create-image.js';
import { MemoryFiles } from '../test-support/memory-files.js';
import { buildChainTree, type ChainTree } from './chain-tree.js';

/** In-memory trees: the engine side of `qcowkit chain` (the CLI test covers the drawing and the file system). */
async function qcow2(files: MemoryFiles, name: string, size: number, backing?: { file: string; format?: string }): Promise<void> {
  await createQcow2(files.add(name), { size, ...(backing === undefined ? {} : { backingFile: backing.file, ...(backing.format === undefined ? {} : { backingFormat: backing.format }) }) });
}

function byName(tree: ChainTree, filename: string) {
  const image = tree.images.find((i) => i.filename === filename);
  if (image === undefined) throw new Error(`${filename} not in the tree`);
  return image;
}

const inDisks = (identity: string): boolean => identity.startsWith('disks/');
const MiB = 1024 * 1024;

describe('buildChainTree', () => {
  it('links overlays to their bases by resolved name, with roles, branches and leaves', async () => {
    const files = new MemoryFiles();
    files.add('disks/base.raw', new Uint8Array(MiB));
    files.add('disks/readme.txt', new TextEncoder().encode('not an image'));
    await qcow2(files, 'disks/a.qcow2', MiB, { file: 'base.raw', format: 'raw' });
    await qcow2(files, 'disks/b.qcow2', MiB, { file: 'base.raw', format: 'raw' });
    await qcow2(files, 'disks/a1.qcow2', MiB, { file: 'a.qcow2', format: 'qcow2' });
    await qcow2(files, 'disks/alone.qcow2', MiB);
    const tree = await buildChainTree([...files.files.keys()], { hostFiles: files, inScope: inDisks });
    expect(tree.roots).toEqual(['disks/alone.qcow2', 'disks/base.raw']);
    expect(byName(tree, 'disks/base.raw')).toMatchObject({ role: 'base', format: 'raw', virtualSize: MiB, overlays: ['disks/a.qcow2', 'disks/b.qcow2'] });
    expect(byName(tree, 'disks/a.qcow2')).toMatchObject({ role: 'overlay', backing: 'disks/base.raw', overlays: ['disks/a1.qcow2'] });
    expect(byName(tree, 'disks/a1.qcow2')).toMatchObject({ role: 'active', backingFilename: 'a.qcow2', backingFormat: 'qcow2', problems: [] });
    expect(byName(tree, 'disks/alone.qcow2').role).toBe('standalone');
    expect(tree.images.map((i) => i.filename)).not.toContain('disks/readme.txt');
  });

  it('flags every fault once per reference', async () => {
    const files = new MemoryFiles();
    files.add('disks/raw.img', new Uint8Array(MiB));
    await qcow2(files, 'disks/q.qcow2', MiB);
    await qcow2(files, 'disks/missing-1.qcow2', MiB, { file: 'gone.qcow2', format: 'qcow2' });
    await qcow2(files, 'disks/missing-2.qcow2', MiB, { file: 'gone.qcow2', format: 'qcow2' });
    await qcow2(files, 'disks/claims-qcow2.qcow2', MiB, { file: 'raw.img', format: 'qcow2' });
    await qcow2(files, 'disks/claims-raw.qcow2', MiB, { file: 'q.qcow2', format: 'raw' });
    await qcow2(files, 'disks/no-format.qcow2', MiB, { file: 'q.qcow2' });
    await qcow2(files, 'disks/larger.qcow2', 2 * MiB, { file: 'q.qcow2', format: 'qcow2' });
    await qcow2(files, 'disks/outside.qcow2', MiB, { file: '/etc/passwd', format: 'raw' });
    await qcow2(files, 'disks/loop-a.qcow2', MiB, { file: 'loop-b.qcow2', format: 'qcow2' });
    await qcow2(files, 'disks/loop-b.qcow2', MiB, { file: 'loop-a.qcow2', format: 'qcow2' });
    files.add('disks/broken.qcow2', Uint8Array.from([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 9]));
    const opened: string[] = [];
    const hostFiles = { open: async (name: string) => (opened.push(name), files.open(name)) };
    const tree = await buildChainTree([...files.files.keys()], { hostFiles, inScope: inDisks });
    const codes = (name: string): string[] => byName(tree, name).problems.map((p) => p.code);
    expect(codes('disks/missing-1.qcow2')).toEqual(['BACKING_MISSING']);
    expect(codes('disks/missing-2.qcow2')).toEqual(['BACKING_MISSING']);
    expect(byName(tree, 'disks/gone.qcow2')).toMatchObject({ role: 'missing', overlays: ['disks/missing-1.qcow2', 'disks/missing-2.qcow2'] });
    expect(codes('disks/claims-qcow2.qcow2')).toEqual(['BACKING_FORMAT_MISMATCH']);
    expect(codes('disks/claims-raw.qcow2')).toEqual(['BACKING_FORMAT_MISMATCH']);
    expect(codes('disks/no-format.qcow2')).toEqual(['BACKING_FORMAT_UNSET']);
    expect(codes('disks/larger.qcow2')).toEqual(['SIZE_MISMATCH']);
    expect(codes('disks/outside.qcow2')).toEqual(['BACKING_OUTSIDE']);
    expect(codes('disks/loop-a.qcow2')).toEqual(['BACKING_LOOP']);
    expect(codes('disks/loop-b.qcow2')).toEqual(['BACKING_LOOP']);
    expect(codes('disks/broken.qcow2')).toEqual(['UNREADABLE']);
    expect(tree.roots).toContain('disks/loop-a.qcow2');
    // The absolute reference outside the given paths was never opened.
    expect(opened).not.toContain('/etc/passwd');
    expect(byName(tree, '/etc/passwd').role).toBe('not-opened');
  });

  it('opens what listed images name one step out, but not what those name in turn', async () => {
    const files = new MemoryFiles();
    await qcow2(files, 'other/deep.qcow2', MiB);
    await qcow2(files, 'other/near.qcow2', MiB, { file: 'deep.qcow2', format: 'qcow2' });
    await qcow2(files, 'disks/top.qcow2', MiB, { file: '../other/near.qcow2', format: 'qcow2' });
    const opened: string[] = [];
    const hostFiles = {
      open: async (name: string) => (opened.push(name), files.open(posix.normalize(name))),
      canonical: async (name: string) => posix.normalize(name),
    };
    const tree = await buildChainTree(['disks/top.qcow2'], { hostFiles, inScope: inDisks });
    expect(opened).toEqual(['disks/top.qcow2', 'disks/../other/near.qcow2']);
    const near = byName(tree, 'disks/../other/near.qcow2');
    expect(near).toMatchObject({ identity: 'other/near.qcow2', listed: false, role: 'overlay', backingFilename: 'deep.qcow2', overlays: ['disks/top.qcow2'] });
    expect(near.backing).toBeUndefined();
    expect(tree.roots).toEqual(['other/near.qcow2']);
  });
});
