/**
 * The import graph of the packages' sources, and the two rules it must keep (docs/architecture.md):
 *
 * - no cycles: no file reaches itself through its imports (type-only imports count: they still tie two files
 *   together, and a cycle of types is a sign that one concern sits in two rooms);
 * - arrows point down: cli -> snapshot -> qcow2 between packages, and inside the engine
 *   entries/api/node/browser/http -> ops -> formats -> device -> engine -> format -> io (errors.ts below all);
 *   device/open-image.ts, which opens an image of any format, sits above formats/.
 *   Tests and test support may import anything.
 *
 * `npx tsx scripts/import-layers.ts` prints every cycle and upward arrow and exits 1 when there is one;
 * scripts/import-layers.test.ts runs the same check in the test suite. The imports are read with the TypeScript
 * compiler's own scanner (ts.preProcessFile), so `import type`, `export … from` and `import()` all count.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

/** File (repository-relative path) -> the repository files it imports. */
export type ImportGraph = Map<string, string[]>;

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');

const PACKAGES = ['packages/qcow2/src', 'packages/snapshot/src', 'packages/cli/src'];

function sourceFiles(dir: string): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...sourceFiles(path));
    else if (entry.name.endsWith('.ts') && !entry.name.endsWith('.d.ts')) out.push(path);
  }
  return out;
}

/** Where an import specifier of `from` lands in the repository, or undefined for a package or `node:*` module. */
function resolveImport(from: string, specifier: string): string | undefined {
  if (specifier.startsWith('.')) {
    const target = resolve(dirname(from), specifier).replace(/\.js$/, '.ts');
    return relative(root, target);
  }
  // The workspace packages by name: their sources stand for their dist/ entry points.
  const match = /^@qcowkit\/(qcow2|snapshot)(\/[a-z]+)?$/.exec(specifier);
  if (match === null) return undefined;
  const pkg = `packages/${match[1]}/src`;
  const sub = match[2]?.slice(1);
  if (sub === undefined) return `${pkg}/index.ts`;
  return sub === 'engine' || sub === 'format' ? `${pkg}/entries/${sub}.ts` : `${pkg}/${sub}/index.ts`;
}

/** The import graph of the packages' sources (tests included: the rules skip them, cycles do not). */
export function importGraph(dirs: string[] = PACKAGES): ImportGraph {
  const graph: ImportGraph = new Map();
  for (const dir of dirs) {
    for (const file of sourceFiles(join(root, dir))) {
      const info = ts.preProcessFile(readFileSync(file, 'utf8'), true, true);
      const targets = new Set<string>();
      for (const imported of info.importedFiles) {
        const target = resolveImport(file, imported.fileName);
        if (target !== undefined) targets.add(target);
      }
      graph.set(relative(root, file), [...targets].sort());
    }
  }
  return graph;
}

/** The cycles of a graph: its strongly connected components of more than one file (or a file importing itself). */
export function findCycles(graph: ImportGraph): string[][] {
  // Tarjan's algorithm, iterative so a long chain of imports cannot overflow the stack.
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const onStack = new Set<string>();
  const stack: string[] = [];
  const cycles: string[][] = [];
  let counter = 0;
  for (const start of graph.keys()) {
    if (index.has(start)) continue;
    const work: Array<{ node: string; next: number }> = [{ node: start, next: 0 }];
    index.set(start, counter);
    low.set(start, counter++);
    stack.push(start);
    onStack.add(start);
    while (work.length > 0) {
      const frame = work[work.length - 1]!;
      const edges = graph.get(frame.node) ?? [];
      if (frame.next < edges.length) {
        const to = edges[frame.next++]!;
        if (!graph.has(to)) continue;
        if (!index.has(to)) {
          index.set(to, counter);
          low.set(to, counter++);
          stack.push(to);
          onStack.add(to);
          work.push({ node: to, next: 0 });
        } else if (onStack.has(to)) {
          low.set(frame.node, Math.min(low.get(frame.node)!, index.get(to)!));
        }
        continue;
      }
      work.pop();
      const parent = work[work.length - 1];
      if (parent !== undefined) low.set(parent.node, Math.min(low.get(parent.node)!, low.get(frame.node)!));
      if (low.get(frame.node) === index.get(frame.node)) {
        const component: string[] = [];
        let member: string;
        do {
          member = stack.pop()!;
          onStack.delete(member);
          component.push(member);
        } while (member !== frame.node);
        if (component.length > 1 || edges.includes(frame.node)) cycles.push(component.sort());
      }
    }
  }
  return cycles;
}

/**
 * The layer of a source file, higher = further up; undefined for files the rules do not judge (tests, test
 * support). Inside the engine the folders rank as the architecture says; files at the top of src/ (index.ts)
 * are entries; errors.ts is below everything.
 */
export function layerOf(file: string): { pkg: string; rank: number } | undefined {
  const match = /^packages\/([a-z0-9]+)\/src\/(.*)$/.exec(file);
  if (match === null) return undefined;
  const [, pkg, rest] = match as unknown as [string, string, string];
  if (/\.test\.ts$/.test(rest) || rest.startsWith('test-support/') || rest.includes('/test-support/')) return undefined;
  const packageRank = { qcow2: 0, snapshot: 100, cli: 200, inspector: 200 }[pkg];
  if (packageRank === undefined) return undefined;
  if (pkg !== 'qcow2') return { pkg, rank: packageRank };
  // The opener of any format (probe, then the qcow2, raw or formats/ device) sits above the devices it opens.
  if (rest === 'device/open-image.ts') return { pkg, rank: 5.5 };
  const folder = rest.includes('/') ? rest.slice(0, rest.indexOf('/')) : rest;
  const ranks: Record<string, number> = {
    'errors.ts': 0,
    io: 1,
    format: 2,
    engine: 3,
    device: 4,
    formats: 5,
    ops: 6,
    // The public surface and the hosts: entries on top of everything they offer.
    api: 7,
    node: 7,
    browser: 7,
    http: 7,
    entries: 8,
    'index.ts': 8,
    interop: 8,
  };
  const rank = ranks[folder];
  return rank === undefined ? undefined : { pkg, rank };
}

/** Arrows that point up (or sideways between folders of one rank, which would let two rooms share a concern). */
export function layerViolations(graph: ImportGraph): string[] {
  const out: string[] = [];
  for (const [from, targets] of graph) {
    const source = layerOf(from);
    if (source === undefined) continue;
    for (const to of targets) {
      const target = layerOf(to);
      if (target === undefined) {
        out.push(`${from} -> ${to} (imports test code)`);
        continue;
      }
      if (target.rank > source.rank) out.push(`${from} -> ${to} (points up)`);
    }
  }
  return out.sort();
}

/** Files of the engine outside src/node/ that import `node:*` (the engine runs in browsers). */
export function nodeImportsOutsideNode(dir = 'packages/qcow2/src'): string[] {
  const out: string[] = [];
  for (const file of sourceFiles(join(root, dir))) {
    const rel = relative(join(root, dir), file);
    if (rel.startsWith('node/') || rel.endsWith('.test.ts') || rel.startsWith('test-support/')) continue;
    const info = ts.preProcessFile(readFileSync(file, 'utf8'), true, true);
    if (info.importedFiles.some((i) => i.fileName.startsWith('node:'))) out.push(relative(root, file));
  }
  return out;
}

if (process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const graph = importGraph();
  const cycles = findCycles(graph);
  const violations = layerViolations(graph);
  const nodeImports = nodeImportsOutsideNode();
  for (const cycle of cycles) console.log(`cycle: ${cycle.join(' <-> ')}`);
  for (const violation of violations) console.log(`upward: ${violation}`);
  for (const file of nodeImports) console.log(`node:* outside src/node: ${file}`);
  console.log(`${graph.size} files, ${cycles.length} cycles, ${violations.length} upward imports, ${nodeImports.length} node:* imports outside src/node`);
  process.exitCode = cycles.length + violations.length + nodeImports.length > 0 ? 1 : 0;
}
