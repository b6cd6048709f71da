import { describe, expect, it } from 'vitest';
import { findCycles, importGraph, layerOf, layerViolations, nodeImportsOutsideNode, type ImportGraph } from './import-layers.js';

describe('import graph of the packages', () => {
  const graph = importGraph();

  it('reads the sources and resolves their imports', () => {
    // A sanity floor, so an empty graph (a broken resolver) cannot pass the checks below.
    expect(graph.size).toBeGreaterThan(200);
    expect(graph.get('packages/qcow2/src/engine/qcow2-image.ts')).toContain('packages/qcow2/src/format/header.ts');
    expect(graph.get('packages/cli/src/commands/info.ts')).toContain('packages/qcow2/src/entries/engine.ts');
  });

  it('has no import cycles', () => {
    expect(findCycles(graph)).toEqual([]);
  });

  it('has no arrow pointing up: cli -> snapshot -> qcow2; inside qcow2 ops -> device -> engine -> format -> io', () => {
    expect(layerViolations(graph)).toEqual([]);
  });

  it('keeps node:* imports in src/node/ (the engine runs in browsers)', () => {
    expect(nodeImportsOutsideNode()).toEqual([]);
  });
});

describe('the checks themselves', () => {
  it('find a cycle through several files and a file importing itself', () => {
    const graph: ImportGraph = new Map([
      ['a.ts', ['b.ts']],
      ['b.ts', ['c.ts']],
      ['c.ts', ['a.ts', 'd.ts']],
      ['d.ts', []],
      ['e.ts', ['e.ts']],
    ]);
    expect(findCycles(graph)).toEqual([['a.ts', 'b.ts', 'c.ts'], ['e.ts']]);
  });

  it('flag an engine file importing ops, and a package importing one above it', () => {
    const graph: ImportGraph = new Map([
      ['packages/qcow2/src/engine/image-writer.ts', ['packages/qcow2/src/ops/zero-detect.ts', 'packages/qcow2/src/format/header.ts']],
      ['packages/qcow2/src/ops/convert-to-raw.ts', ['packages/qcow2/src/engine/image-writer.ts']],
      ['packages/snapshot/src/snapshot.ts', ['packages/cli/src/main.ts']],
    ]);
    expect(layerViolations(graph)).toEqual([
      'packages/qcow2/src/engine/image-writer.ts -> packages/qcow2/src/ops/zero-detect.ts (points up)',
      'packages/snapshot/src/snapshot.ts -> packages/cli/src/main.ts (points up)',
    ]);
  });

  it('rank the engine folders in the documented order, tests outside the rules', () => {
    const rank = (file: string): number | undefined => layerOf(`packages/qcow2/src/${file}`)?.rank;
    const order = ['errors.ts', 'io/storage.ts', 'format/header.ts', 'engine/refcounts.ts', 'device/qcow2-device.ts', 'ops/convert-to-raw.ts', 'api/open.ts'];
    const ranks = order.map((file) => rank(file)!);
    expect([...ranks].sort((a, b) => a - b)).toEqual(ranks);
    expect(new Set(ranks).size).toBe(ranks.length);
    expect(rank('engine/check.test.ts')).toBeUndefined();
    expect(rank('test-support/crash-run.ts')).toBeUndefined();
  });
});
