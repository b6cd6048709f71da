#!/usr/bin/env node
// Bundles the compiled CLI (dist/main.js and everything it reaches, from `tsc -b`) into one CommonJS file,
// dist/qcowkit.cjs, and records a V8 code cache for it (dist/qcowkit.cjs.cache). bin/qcowkit.js runs it.
//
// Why: loading ~60 separate ES modules and compiling them cost ~100 ms of every command's start-up (issue 10).
// One CommonJS file loads synchronously; modules behind the command catalog's dynamic imports stay lazy (esbuild
// wraps them in initialisers that run only when the command is chosen), and the code cache lets V8 skip parsing.
// The cache is specific to the V8 that made it: another Node version rejects it and simply compiles the source.
//
// Kept out of the bundle: the zstd WASM package (it reads its .wasm next to its own files) and Node built-ins.
//   node packages/cli/scripts/bundle.mjs        (run by `npm run build`, so `npm ci` builds it too)
import { build } from 'esbuild';
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { readFile, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
const cliDir = join(dirname(fileURLToPath(import.meta.url)), '..');
const outfile = join(cliDir, 'dist', 'qcowkit.cjs');

/**
 * Modules of @qcowkit/qcow2/node find files relative to their own location (the optional native addon). In the
 * bundle they are elsewhere: their import.meta.url becomes the installed package's dist/node/ entry, resolved at
 * run time from the bundle (the monorepo's packages/qcow2, or node_modules/@qcowkit/qcow2).
 */
const qcow2NodeModuleUrl = {
  name: 'qcow2-node-module-url',
  setup(b) {
    b.onLoad({ filter: /[\\/]qcow2[\\/]dist[\\/]node[\\/][^\\/]+\.js$/ }, async (args) => {
      const contents = await readFile(args.path, 'utf8');
      return { contents: contents.replaceAll('import.meta.url', '__qcow2NodeModuleUrl()'), loader: 'js' };
    });
  },
};

/**
 * Node built-ins that cost milliseconds to load (child_process pulls in net, dgram and the stream stack; zlib,
 * worker_threads, http, crypto their own graphs, fs/promises readline's) but that most commands never call: commander requires
 * child_process for external subcommands, the engine's node entry point zlib and worker_threads for compression.
 * Each becomes a stand-in that loads the real module on first use (imports compile to property reads at the call,
 * `(0, import_node_zlib.deflateRaw)(...)`, so the first read loads it). ~10 ms off every start-up (issue 10).
 */
const LAZY_BUILTINS = ['child_process', 'worker_threads', 'zlib', 'http', 'https', 'crypto', 'net', 'fs/promises'];
const lazyBuiltins = {
  name: 'lazy-builtins',
  setup(b) {
    const filter = new RegExp(`^(node:)?(${LAZY_BUILTINS.join('|').replaceAll('/', '\\/')})$`);
    b.onResolve({ filter }, (args) => ({ path: args.path.replace(/^node:/, ''), namespace: 'lazy-builtin' }));
    b.onLoad({ filter: /.*/, namespace: 'lazy-builtin' }, (args) => ({
      // Its export names, listed at build time: the bundle copies them onto import objects (__toESM) without
      // loading the module (the copies are getters).
      contents: `module.exports = __lazyBuiltin(${JSON.stringify(`node:${args.path}`)}, ${JSON.stringify(Object.getOwnPropertyNames(require(`node:${args.path}`)))});`,
      loader: 'js',
    }));
  },
};

await rm(`${outfile}.cache`, { force: true });
await build({
  entryPoints: [join(cliDir, 'dist', 'main.js')],
  outfile,
  bundle: true,
  format: 'cjs',
  platform: 'node',
  target: 'node20',
  external: ['@bokuweb/zstd-wasm'],
  // import() of the packages left out becomes require(): a script compiled from a code cache has no import().
  supported: { 'dynamic-import': false },
  plugins: [qcow2NodeModuleUrl, lazyBuiltins],
  // output/version.ts: the version without resolving package.json at every start.
  define: { QCOWKIT_BUNDLED_VERSION: JSON.stringify(JSON.parse(await readFile(join(cliDir, 'package.json'), 'utf8')).version) },
  // Verbatim (not bundled). __qcow2NodeModuleUrl: where the installed @qcowkit/qcow2/node lives, found when first
  // asked: its file in one of the bundle's node_modules directories (what require.resolve finds, without loading
  // the ES module resolver that package exports need), else require.resolve. __lazyBuiltin: see LAZY_BUILTINS.
  banner: {
    js: [
      'var __qcow2NodeUrl;',
      'function __qcow2NodeModuleUrl() {',
      '  if (__qcow2NodeUrl !== undefined) return __qcow2NodeUrl;',
      "  const fs = require('node:fs'), url = require('node:url');",
      '  let file;',
      "  for (const dir of module.paths) if (fs.existsSync(`${dir}/@qcowkit/qcow2/dist/node/index.js`)) { file = fs.realpathSync.native(`${dir}/@qcowkit/qcow2/dist/node/index.js`); break; }",
      "  return (__qcow2NodeUrl = url.pathToFileURL(file ?? require.resolve('@qcowkit/qcow2/node')).href);",
      '}',
      'function __lazyBuiltin(name, keys) {',
      '  let real;',
      '  const load = () => (real ??= require(name));',
      '  return new Proxy({}, {',
      '    get: (_, key) => load()[key],',
      '    has: (_, key) => key in load(),',
      '    ownKeys: () => keys,',
      '    getOwnPropertyDescriptor: (_, key) => (keys.includes(key) ? { value: undefined, writable: true, enumerable: true, configurable: true } : undefined),',
      '  });',
      '}',
    ].join('\n'),
  },
  // Smaller to read and to hash at start-up; identifiers are kept, so QCOWKIT_DEBUG stack traces stay readable.
  minifyWhitespace: true,
  minifySyntax: true,
  // ASCII only (non-ASCII escaped), so the launcher reads it as latin1 without UTF-8 decoding.
  charset: 'ascii',
  legalComments: 'none',
  logLevel: 'warning',
});

// The code cache: the launcher runs the bundle once (every command registered, for --help) and writes what V8
// compiled, so the functions start-up runs are in it too.
const launcher = join(cliDir, 'bin', 'qcowkit.js');
const run = spawnSync(process.execPath, [launcher, '--help'], { env: { ...process.env, QCOWKIT_WRITE_CODE_CACHE: '1' }, stdio: ['ignore', 'ignore', 'inherit'] });
if (run.status !== 0) throw new Error(`making the code cache failed (exit ${run.status ?? run.signal})`);
