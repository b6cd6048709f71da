import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { hasQemuImg, requireQemuImg } from '../../../../fixtures/corpus.js';
import { isWritable } from '../device/block-device.js';
import { openImage } from '../device/open-image.js';
import { createQcow2 } from '../engine/create-image.js';
import { MemoryFiles } from '../test-support/memory-files.js';
import { commitImage } from './commit.js';
import { rebaseImage } from './rebase.js';

requireQemuImg();

/**
 * Random trees of overlays with random writes, then random commits (into the backing file, into a deeper
 * image with -b, with -d) and rebases (safe onto any image outside the overlay's own subtree or onto nothing,
 * and unsafe), against a plain model: per image, the bytes it holds itself and which allocation units (clusters,
 * or subclusters with extended L2) hold them; what an image shows is its own units over what its backing file
 * shows. After every step, every image must read as the model says; at the end qemu-img check must call every
 * image clean.
 */
const SIZE = 512 * 1024;
const CLUSTER_SIZES = [512, 4096, 16384, 65536];

interface ModelImage {
  name: string;
  raw: boolean;
  clusterSize: number;
  /** Allocation unit: a write allocates (with copy-on-write) every unit it touches. */
  unit: number;
  backing: string | undefined;
  allocated: Uint8Array;
  data: Uint8Array;
}

class Model {
  readonly images = new Map<string, ModelImage>();

  view(name: string): Uint8Array {
    const image = this.images.get(name)!;
    if (image.raw) return image.data.slice();
    const out = image.backing === undefined ? new Uint8Array(SIZE) : this.view(image.backing);
    for (let u = 0; u < image.allocated.length; u++) {
      if (image.allocated[u]) out.set(image.data.subarray(u * image.unit, (u + 1) * image.unit), u * image.unit);
    }
    return out;
  }

  write(name: string, offset: number, bytes: Uint8Array): void {
    const image = this.images.get(name)!;
    if (!image.raw) {
      const current = this.view(name);
      for (let u = Math.floor(offset / image.unit); u * image.unit < offset + bytes.length; u++) {
        if (image.allocated[u]) continue;
        image.allocated[u] = 1;
        image.data.set(current.subarray(u * image.unit, (u + 1) * image.unit), u * image.unit);
      }
    }
    image.data.set(bytes, offset);
  }

  /** The layers of an image's chain, itself first. */
  chain(name: string): ModelImage[] {
    const out: ModelImage[] = [];
    for (let at: string | undefined = name; at !== undefined; at = this.images.get(at)!.backing) out.push(this.images.get(at)!);
    return out;
  }

  /** Names of the images whose chain contains `name` (itself included). */
  subtree(name: string): Set<string> {
    const out = new Set<string>();
    for (const image of this.images.values()) if (this.chain(image.name).some((layer) => layer.name === name)) out.add(image.name);
    return out;
  }

  commit(top: string, depth: number, drop: boolean): void {
    const layers = this.chain(top);
    const base = layers[depth]!;
    const view = this.view(top);
    const covered = new Uint8Array(SIZE);
    for (const layer of layers.slice(0, depth)) {
      for (let u = 0; u < layer.allocated.length; u++) if (layer.allocated[u]) covered.fill(1, u * layer.unit, (u + 1) * layer.unit);
    }
    for (let start = 0; start < SIZE; ) {
      if (!covered[start]) {
        start++;
        continue;
      }
      let end = start;
      while (end < SIZE && covered[end]) end++;
      this.write(base.name, start, view.slice(start, end));
      start = end;
    }
    if (!drop) layers[0]!.allocated.fill(0);
  }

  rebase(name: string, target: string | undefined, unsafe: boolean): void {
    const image = this.images.get(name)!;
    if (!unsafe) {
      const old = this.view(name);
      const next = target === undefined ? new Uint8Array(SIZE) : this.view(target);
      for (let c = 0; c < SIZE; c += image.clusterSize) {
        let differs = false;
        for (let b = c; b < c + image.clusterSize && !differs; b++) differs = !image.allocated[Math.floor(b / image.unit)] && old[b] !== next[b];
        if (!differs) continue;
        for (let u = c / image.unit; u < (c + image.clusterSize) / image.unit; u++) image.allocated[u] = 1;
        image.data.set(old.subarray(c, c + image.clusterSize), c);
      }
    }
    image.backing = target;
  }
}

type Op =
  | { kind: 'overlay'; parent: number; cluster: number; extendedL2: boolean }
  | { kind: 'write'; image: number; offset: number; length: number; seed: number; zero: boolean }
  | { kind: 'commit'; image: number; deeper: number; drop: boolean }
  | { kind: 'rebase'; image: number; target: number; unsafe: boolean };

function pattern(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = (x & 0xff) | 1;
  }
  return out;
}

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('overlay' as const), parent: fc.nat(), cluster: fc.nat(), extendedL2: fc.boolean() }) },
  {
    weight: 5,
    arbitrary: fc.record({
      kind: fc.constant('write' as const),
      image: fc.nat(),
      offset: fc.integer({ min: 0, max: SIZE - 1 }),
      length: fc.integer({ min: 1, max: 96 * 1024 }),
      seed: fc.nat(),
      zero: fc.boolean(),
    }),
  },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('commit' as const), image: fc.nat(), deeper: fc.nat({ max: 3 }), drop: fc.boolean() }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('rebase' as const), image: fc.nat(), target: fc.nat(), unsafe: fc.boolean() }) },
);

interface Harness {
  files: MemoryFiles;
  model: Model;
  log: string[];
}

async function addImage(h: Harness, name: string, parent: string | undefined, clusterSize: number, extendedL2: boolean, raw = false): Promise<void> {
  const storage = h.files.add(name);
  if (raw) await storage.write(new Uint8Array(SIZE), 0);
  else {
    await createQcow2(storage, {
      size: SIZE,
      clusterSize,
      extendedL2,
      ...(parent === undefined ? {} : { backingFile: parent, backingFormat: h.model.images.get(parent)!.raw ? 'raw' : 'qcow2' }),
    });
  }
  h.model.images.set(name, {
    name,
    raw,
    clusterSize,
    unit: extendedL2 ? clusterSize / 32 : clusterSize,
    backing: parent,
    allocated: new Uint8Array(SIZE / (extendedL2 ? clusterSize / 32 : clusterSize)),
    data: new Uint8Array(SIZE),
  });
}

async function applyOp(h: Harness, op: Op): Promise<void> {
  const names = [...h.model.images.keys()];
  const pick = (n: number): string => names[n % names.length]!;
  const qcow2 = names.filter((n) => !h.model.images.get(n)!.raw);
  switch (op.kind) {
    case 'overlay': {
      if (names.length >= 9) return;
      const parent = pick(op.parent);
      const clusterSize = CLUSTER_SIZES[op.cluster % CLUSTER_SIZES.length]!;
      const name = `img${names.length}.qcow2`;
      h.log.push(`overlay ${name} over ${parent} (cluster ${clusterSize}${op.extendedL2 && clusterSize >= 16384 ? ', extended L2' : ''})`);
      await addImage(h, name, parent, clusterSize, op.extendedL2 && clusterSize >= 16384);
      return;
    }
    case 'write': {
      const name = pick(op.image);
      const length = Math.min(op.length, SIZE - op.offset);
      h.log.push(`${op.zero ? 'zero' : 'write'} ${name} ${op.offset}+${length}`);
      const device = await openImage(name, { hostFiles: h.files, writable: true });
      try {
        if (!isWritable(device)) throw new Error('not writable');
        const bytes = op.zero ? new Uint8Array(length) : pattern(length, op.seed);
        if (op.zero) await device.writeZeroes(op.offset, length);
        else await device.write(bytes, op.offset);
        h.model.write(name, op.offset, bytes);
      } finally {
        await device.close();
      }
      return;
    }
    case 'commit': {
      const overlays = qcow2.filter((n) => h.model.images.get(n)!.backing !== undefined);
      if (overlays.length === 0) return;
      const top = overlays[op.image % overlays.length]!;
      const chain = h.model.chain(top);
      const depth = op.deeper === 0 ? 1 : 1 + (op.deeper % (chain.length - 1));
      const base = op.deeper === 0 ? undefined : chain[depth]!.name;
      h.log.push(`commit ${top}${base === undefined ? '' : ` -b ${base}`}${op.drop ? ' -d' : ''}`);
      const result = await commitImage(top, { hostFiles: h.files, ...(base === undefined ? {} : { base }), drop: op.drop });
      expect(result.baseDepth).toBe(depth);
      h.model.commit(top, depth, op.drop || base !== undefined);
      return;
    }
    case 'rebase': {
      if (qcow2.length === 0) return;
      const name = qcow2[op.image % qcow2.length]!;
      const excluded = h.model.subtree(name);
      const targets = names.filter((n) => !excluded.has(n));
      const target = op.target % (targets.length + 1) === 0 ? undefined : targets[(op.target % (targets.length + 1)) - 1];
      h.log.push(`rebase ${op.unsafe ? '-u ' : ''}${name} -b '${target ?? ''}'`);
      await rebaseImage(name, {
        hostFiles: h.files,
        backing: target ?? '',
        ...(target === undefined ? {} : { backingFormat: h.model.images.get(target)!.raw ? 'raw' : 'qcow2' }),
        unsafe: op.unsafe,
      });
      h.model.rebase(name, target, op.unsafe);
      return;
    }
  }
}

async function expectViews(h: Harness): Promise<void> {
  for (const name of h.model.images.keys()) {
    const device = await openImage(name, { hostFiles: h.files });
    try {
      expect(device.size).toBe(SIZE);
      const actual = new Uint8Array(SIZE);
      await device.read(actual, 0);
      const expected = h.model.view(name);
      if (!Buffer.from(actual).equals(Buffer.from(expected))) {
        let at = 0;
        while (actual[at] === expected[at]) at++;
        throw new Error(`${name} differs from the model at offset ${at}\n${h.log.join('\n')}`);
      }
    } finally {
      await device.close();
    }
  }
}

function qemuCheckAll(h: Harness): void {
  const dir = mkdtempSync(join(tmpdir(), 'qcowkit-chain-prop-'));
  try {
    for (const [name, storage] of h.files.files) writeFileSync(join(dir, name), storage.contents());
    for (const image of h.model.images.values()) {
      if (image.raw) continue;
      const r = spawnSync('qemu-img', ['check', image.name], { cwd: dir, encoding: 'utf8' });
      expect(r.status, `qemu-img check ${image.name}: ${r.stdout}${r.stderr}\n${h.log.join('\n')}`).toBe(0);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

describe('commit and rebase against a model of every image in a tree', () => {
  it('random trees, writes, commits and rebases', { timeout: 300_000 }, async () => {
    await fc.assert(
      fc.asyncProperty(fc.boolean(), fc.nat(), fc.array(opArb, { minLength: 4, maxLength: 24 }), async (rawBase, seed, ops) => {
        const h: Harness = { files: new MemoryFiles(), model: new Model(), log: [] };
        const baseName = rawBase ? 'base.raw' : 'base.qcow2';
        await addImage(h, baseName, undefined, 65536, false, rawBase);
        await applyOp(h, { kind: 'write', image: 0, offset: 0, length: SIZE / 2, seed, zero: false });
        await applyOp(h, { kind: 'overlay', parent: 0, cluster: seed, extendedL2: seed % 3 === 0 });
        for (const op of ops) {
          await applyOp(h, op);
          await expectViews(h);
        }
        if (hasQemuImg()) qemuCheckAll(h);
      }),
      { numRuns: 40 },
    );
  });
});
