#!/usr/bin/env node
'use strict';
// The `qcowkit` command. CommonJS on purpose (bin/package.json): it runs before any ES module is loaded, and
// Node's ES module loader reads files on libuv's thread pool, which fixes the pool's size at its first use. So
// this is the one place that can size the pool for convert's parallel reads and writes (qemu-img keeps 8
// requests in flight).
const { readFileSync, statSync } = require('node:fs');
const Module = require('node:module');
const { join } = require('node:path');
const vm = require('node:vm');

if (!process.env.UV_THREADPOOL_SIZE) process.env.UV_THREADPOOL_SIZE = '8';

const dist = join(__dirname, '..', 'dist');
const bundle = join(dist, 'qcowkit.cjs');

function mtime(file) {
  try {
    return statSync(file).mtimeMs;
  } catch {
    return undefined;
  }
}

/**
 * dist/qcowkit.cjs (scripts/bundle.mjs) when it exists and, in a source tree, is at least as new as the last
 * TypeScript build of the three packages; a tree rebuilt with `tsc -b` alone runs its fresh dist/main.js.
 */
function bundleIsFresh() {
  const built = mtime(bundle);
  if (built === undefined) return false;
  const root = join(__dirname, '..', '..');
  for (const pkg of ['cli', 'qcow2', 'snapshot']) {
    const compiled = mtime(join(root, pkg, 'tsconfig.tsbuildinfo'));
    if (compiled !== undefined && compiled > built) return false;
  }
  return true;
}

/** Runs the bundle as a CommonJS module, compiled with its V8 code cache when the cache fits this Node. */
function runBundle() {
  const source = readFileSync(bundle, 'latin1'); // ASCII: esbuild escapes the rest
  const cacheFile = `${bundle}.cache`;
  let cachedData;
  try {
    cachedData = readFileSync(cacheFile);
  } catch {
    cachedData = undefined;
  }
  const script = new vm.Script(Module.wrap(source), { filename: bundle, cachedData });
  if (process.env.QCOWKIT_WRITE_CODE_CACHE === '1') {
    process.once('exit', () => require('node:fs').writeFileSync(cacheFile, script.createCachedData()));
  }
  const module = new Module(bundle, null);
  module.filename = bundle;
  module.paths = Module._nodeModulePaths(dist);
  if (process.env.QCOWKIT_LAUNCH_TRACE === '1') {
    const cache = cachedData === undefined ? 'none' : script.cachedDataRejected ? 'rejected' : 'accepted';
    process.stderr.write(`qcowkit: launch: bundle, code cache ${cache}, UV_THREADPOOL_SIZE=${process.env.UV_THREADPOOL_SIZE}\n`);
  }
  const compiled = script.runInThisContext();
  compiled.call(module.exports, module.exports, Module.createRequire(bundle), module, bundle, dist);
}

if (bundleIsFresh()) runBundle();
else {
  if (process.env.QCOWKIT_LAUNCH_TRACE === '1') process.stderr.write('qcowkit: launch: dist/main.js (no bundle, or older than the last tsc build)\n');
  import('../dist/main.js');
}
