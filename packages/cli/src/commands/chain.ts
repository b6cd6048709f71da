import type { Command } from 'commander';
import { readdir, realpath, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Qcow2Error, buildChainTree, type ChainImage, type ChainTree, type HostFiles } from '@qcowkit/qcow2/engine';
import { fileIoError, nodeHostFiles } from '@qcowkit/qcow2/node';
import { CommandError } from '../output/errors.js';
import { sizeToStr } from '../output/human-size.js';
import { parseOutputFormat } from '../output/output-format.js';

/**
 * qcowkit chain PATH...: the tree of backing files among the images found in the given files and directories
 * (qcow2 found by magic, whatever the name), with faults flagged. Exit status 0, or 2 when an error-level fault
 * was found (a missing backing file, a format mismatch, a loop, an absolute backing path outside the given
 * paths, an unreadable header); 1 when a given path cannot be read.
 */

/** Regular files under `path` (itself when it is a file). Symlinked directories are not entered (no cycles). */
async function listFiles(path: string, out: string[]): Promise<void> {
  const entries = await readdir(path, { withFileTypes: true });
  entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  for (const entry of entries) {
    const full = join(path, entry.name);
    if (entry.isDirectory()) await listFiles(full, out);
    else if (entry.isFile()) out.push(full);
    else if (entry.isSymbolicLink()) {
      const target = await stat(full).catch(() => undefined);
      if (target?.isFile()) out.push(full);
    }
  }
}

/**
 * The file system, read-only, refusing anything but regular files: an image may name a FIFO (opening it would
 * block) or a device as its backing file.
 */
const regularFilesOnly: HostFiles = {
  async open(name) {
    let info;
    try {
      info = await stat(name);
    } catch (error) {
      throw fileIoError(name, error);
    }
    if (!info.isFile()) throw new Qcow2Error('IO_ERROR', 'not a regular file', { file: name });
    return nodeHostFiles.open(name, { writable: false });
  },
  canonical: (name) => nodeHostFiles.canonical!(name),
};

function describeNode(image: ChainImage): string {
  if (image.role === 'missing') return `${image.filename}  (missing)`;
  if (image.role === 'not-opened') return `${image.filename}  (not opened: outside the given paths)`;
  const parts: string[] = [];
  if (image.format !== undefined) parts.push(image.format);
  if (image.virtualSize !== undefined) parts.push(`${sizeToStr(image.virtualSize)} virtual`);
  if (image.actualSize !== undefined) parts.push(`${sizeToStr(image.actualSize)} allocated`);
  const role = image.role === 'standalone' ? 'standalone' : image.role === 'active' ? 'active' : image.role;
  return `${image.filename}  ${parts.join(', ')}  [${role}${image.listed ? '' : ', named only'}]`;
}

/** The tree drawn with box-drawing characters; details (snapshots, faults) under each image. */
export function formatChainTree(tree: ChainTree): string {
  const byIdentity = new Map(tree.images.map((image) => [image.identity, image]));
  const lines: string[] = [];
  const drawn = new Set<string>();
  const draw = (identity: string, prefix: string, branch: string, childPrefix: string): void => {
    const image = byIdentity.get(identity)!;
    if (drawn.has(identity)) {
      lines.push(`${prefix}${branch}${image.filename}  (loop: drawn above)`);
      return;
    }
    drawn.add(identity);
    lines.push(`${prefix}${branch}${describeNode(image)}`);
    const detail = `${prefix}${childPrefix}${image.overlays.length > 0 ? '│   ' : '    '}`;
    if (image.backing === undefined && image.backingFilename !== undefined && image.role !== 'missing') {
      lines.push(`${detail}backing file: ${image.backingFilename} (not followed: named by an image outside the given paths)`);
    }
    if (image.snapshots.length > 0) {
      lines.push(`${detail}snapshots: ${image.snapshots.map((s) => `${s.id} "${s.name}"`).join(', ')}`);
    }
    for (const problem of image.problems) lines.push(`${detail}${problem.severity === 'error' ? '✗ error' : '! warning'}: ${problem.message}`);
    image.overlays.forEach((child, i) => {
      const last = i === image.overlays.length - 1;
      draw(child, `${prefix}${childPrefix}`, last ? '└── ' : '├── ', last ? '    ' : '│   ');
    });
  };
  for (const root of tree.roots) draw(root, '', '', '');
  const problems = tree.images.flatMap((image) => image.problems);
  const errors = problems.filter((p) => p.severity === 'error').length;
  const images = tree.images.filter((image) => image.role !== 'missing' && image.role !== 'not-opened').length;
  lines.push('');
  lines.push(`${images} image${images === 1 ? '' : 's'}, ${errors} error${errors === 1 ? '' : 's'}, ${problems.length - errors} warning${problems.length - errors === 1 ? '' : 's'}`);
  return `${lines.join('\n')}\n`;
}

/** The tree as JSON: every image once, referring to others by filename; `roots` are the top-level images. */
export function chainTreeJson(tree: ChainTree): unknown {
  const byIdentity = new Map(tree.images.map((image) => [image.identity, image]));
  const name = (identity: string): string => byIdentity.get(identity)!.filename;
  return {
    images: tree.images.map((image) => {
      const out: Record<string, unknown> = { filename: image.filename, 'canonical-path': image.identity, role: image.role, listed: image.listed };
      if (image.format !== undefined) out.format = image.format;
      if (image.virtualSize !== undefined) out['virtual-size'] = image.virtualSize;
      if (image.actualSize !== undefined) out['actual-size'] = image.actualSize;
      if (image.clusterSize !== undefined) out['cluster-size'] = image.clusterSize;
      if (image.backingFilename !== undefined) out['backing-filename'] = image.backingFilename;
      if (image.fullBackingFilename !== undefined) out['full-backing-filename'] = image.fullBackingFilename;
      if (image.backingFormat !== undefined) out['backing-filename-format'] = image.backingFormat;
      if (image.backing !== undefined) out.backing = name(image.backing);
      out.overlays = image.overlays.map(name);
      out.snapshots = image.snapshots;
      out.problems = image.problems;
      return out;
    }),
    roots: tree.roots.map(name),
  };
}

export function registerChain(program: Command): void {
  program
    .command('chain')
    .description('draw the tree of backing files among the images in the given files and directories, and flag faults')
    .argument('<path...>')
    .option('--output <fmt>', 'human or json', 'human')
    .action(async (paths: string[], opts: { output: string }) => {
      const output = parseOutputFormat(opts.output);
      const files: string[] = [];
      const roots: string[] = [];
      for (const path of paths) {
        let info;
        try {
          info = await stat(path);
          roots.push(await realpath(path));
        } catch (error) {
          throw new CommandError(`Could not open '${path}': ${(error as NodeJS.ErrnoException).code === 'ENOENT' ? 'No such file or directory' : (error as Error).message}`, 1, path);
        }
        if (info.isDirectory()) await listFiles(path, files);
        else if (info.isFile()) files.push(path);
        else throw new CommandError(`Could not open '${path}': not a regular file or directory`, 1, path);
      }
      const inScope = (identity: string): boolean => roots.some((root) => identity === root || identity.startsWith(root.endsWith('/') ? root : `${root}/`));
      const tree = await buildChainTree(files, { hostFiles: regularFilesOnly, inScope });
      process.stdout.write(output === 'json' ? `${JSON.stringify(chainTreeJson(tree), null, 4)}\n` : formatChainTree(tree));
      if (tree.images.some((image) => image.problems.some((p) => p.severity === 'error'))) process.exitCode = 2;
    });
}
