import { build } from 'esbuild';
import { builtinModules } from 'node:module';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const nodeBuiltins = new Set([...builtinModules, ...builtinModules.map((m) => `node:${m}`)]);

async function nodeBuiltinsImportedBy(entry: string): Promise<string[]> {
  const imported: string[] = [];
  await build({
      entryPoints: [fileURLToPath(new URL(entry, import.meta.url))],
      bundle: true,
      platform: 'browser',
      format: 'esm',
      write: false,
      logLevel: 'silent',
      plugins: [
        {
          name: 'record-node-builtins',
          setup(b) {
            b.onResolve({ filter: /.*/ }, (args) => {
              if (nodeBuiltins.has(args.path)) {
                imported.push(`${args.path} (from ${args.importer})`);
                return { path: args.path, external: true };
              }
              return undefined;
            });
          },
        },
      ],
  });
  return imported;
}

describe('the portable engine', () => {
  it.each(['./index.ts', './entries/engine.ts', './entries/format.ts', './http/index.ts', './browser/index.ts'])('%s bundles for the browser without any Node built-in', async (entry) => {
    expect(await nodeBuiltinsImportedBy(entry)).toEqual([]);
  });

  it('(control) the Node entry point is caught importing built-ins', async () => {
    expect((await nodeBuiltinsImportedBy('./node/index.ts')).length).toBeGreaterThan(0);
  });
});
