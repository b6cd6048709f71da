/**
 * Builds an instrumented copy of the engine (packages/qcow2/dist) for coverage-guided fuzzing, with Jazzer.js's
 * own Babel plugins: edge coverage (every branch calls Fuzzer.coverageTracker.incrementCounter(id)) and compare
 * hooks (comparisons with constants call Fuzzer.tracer.*, which feeds the constants to the mutator). The copy
 * keeps the package layout, so its imports resolve as the original's do.
 */
import { cpSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

const require = createRequire(import.meta.url);
const { transformAsync } = require('@babel/core') as { transformAsync(code: string, options: Record<string, unknown>): Promise<{ code?: string | null } | null> };
// Only the plugin files: the package's main module loads libFuzzer's native addon, which cannot load here.
const { codeCoverage } = require('@jazzer.js/instrumentor/dist/plugins/codeCoverage.js') as { codeCoverage: (ids: { nextEdgeId(): number }) => () => unknown };
const { compareHooks } = require('@jazzer.js/instrumentor/dist/plugins/compareHooks.js') as { compareHooks: () => unknown };

export const ROOT = join(dirname(new URL(import.meta.url).pathname), '..');

/** Instruments packages/qcow2/dist into `out` (which must be inside the repository); returns the edge count. */
export async function instrumentEngine(out: string): Promise<number> {
  const source = join(ROOT, 'packages/qcow2');
  rmSync(out, { recursive: true, force: true });
  mkdirSync(out, { recursive: true });
  cpSync(join(source, 'package.json'), join(out, 'package.json'));
  let edges = 0;
  const ids = { nextEdgeId: () => edges++ };
  const walk = async (from: string, to: string): Promise<void> => {
    mkdirSync(to, { recursive: true });
    for (const name of readdirSync(from)) {
      const path = join(from, name);
      if (statSync(path).isDirectory()) {
        await walk(path, join(to, name));
      } else if (name.endsWith('.js')) {
        const result = await transformAsync(readFileSync(path, 'utf8'), {
          filename: path,
          babelrc: false,
          configFile: false,
          sourceMaps: false,
          // No comments: no sourceMappingURL pointing at maps the copy does not have.
          comments: false,
          plugins: [codeCoverage(ids), compareHooks()],
        });
        writeFileSync(join(to, name), result?.code ?? '');
      } else if (!name.endsWith('.map') && !name.endsWith('.d.ts')) {
        cpSync(path, join(to, name));
      }
    }
  };
  await walk(join(source, 'dist'), join(out, 'dist'));
  return edges;
}
