#!/usr/bin/env node
// Builds the native helper (qcowkit_native: SEEK_DATA/SEEK_HOLE, OFD image locks, copy_file_range) from source
// into native/build/Release/qcowkit_native.node.
//
// Run from the root `prepare` script (so `npm ci` / `npm install` in the repository build it) or by hand:
//   node packages/qcow2/native/build.mjs              # build/Release/qcowkit_native.node (preferred by the loader)
//   node packages/qcow2/native/build.mjs --prebuilt   # the same, then copied to prebuilt/<platform>-<arch>/
//
// The package ships a prebuilt linux-x64 copy (prebuilt/linux-x64/qcowkit_native.node), so an install from the
// registry needs no compiler; the loader (src/node/native-addon.ts) takes a fresh build first, else the prebuilt
// copy for the platform, else the pure fallback. Rebuild the prebuilt copy on Debian 12 (glibc 2.36) or older with
// Node 20 (`--prebuilt`; it prints the glibc symbol versions the result needs) and commit it.
//
// It NEVER fails the install: on any problem it prints one warning line and exits 0 (the prebuilt copy or the
// pure fallback then serves). Set QCOWKIT_SKIP_NATIVE=1 to skip the build.
//
// It uses the node-gyp bundled with npm and builds against the headers installed next to node (nodedir), so
// nothing is downloaded. npm does not build this on its own: its implicit `node-gyp rebuild` only fires for a
// package whose root holds binding.gyp, and ours lives in packages/qcow2/native/.
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const output = join(here, 'build', 'Release', 'qcowkit_native.node');
const prebuiltDir = join(here, 'prebuilt', `${process.platform}-${process.arch}`);
const wantPrebuilt = process.argv.includes('--prebuilt');
// Must match QCOWKIT_NATIVE_ABI in qcowkit-native.c and NATIVE_ABI in src/node/native-addon.ts.
const ABI = 2;
const FUNCTIONS = ['seekData', 'seekHole', 'ofdSetLock', 'ofdGetLock', 'copyFileRange', 'copyFileRangeAsync'];
const logFile = join(here, 'build', 'node-gyp.log');
const TIMEOUT_MS = 5 * 60 * 1000;

function warn(reason) {
  console.warn(`qcowkit: native helper not built from source (${reason}); the prebuilt copy or the pure fallback will serve`);
  process.exit(wantPrebuilt ? 1 : 0);
}

/** npm's own node-gyp: from the npm running us, else from the global npm (next to this node, or `npm prefix -g`). */
function findNodeGyp() {
  const direct = [];
  if (process.env.npm_config_node_gyp) direct.push(process.env.npm_config_node_gyp);
  if (process.env.npm_execpath) {
    // .../npm/bin/npm-cli.js -> .../npm/node_modules/node-gyp/bin/node-gyp.js
    direct.push(resolve(dirname(process.env.npm_execpath), '..', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'));
  }
  const found = direct.find((c) => existsSync(c));
  if (found) return found;

  const inNpm = (npmDir) => {
    try {
      return createRequire(join(npmDir, 'package.json')).resolve('node-gyp/bin/node-gyp.js');
    } catch {
      return undefined;
    }
  };
  const prefix = resolve(dirname(process.execPath), '..');
  // Unix layout <prefix>/bin/node + <prefix>/lib/node_modules/npm; Windows layout <prefix>/node.exe + node_modules/npm.
  const beside = inNpm(join(prefix, 'lib', 'node_modules', 'npm')) ?? inNpm(join(dirname(process.execPath), 'node_modules', 'npm'));
  if (beside) return beside;

  const win = process.platform === 'win32';
  const npmPrefix = spawnSync(win ? 'npm.cmd' : 'npm', ['prefix', '-g'], { encoding: 'utf8', timeout: 30_000, shell: win });
  const p = npmPrefix.status === 0 ? npmPrefix.stdout.trim() : '';
  if (p === '') return undefined;
  return inNpm(join(p, 'lib', 'node_modules', 'npm')) ?? inNpm(join(p, 'node_modules', 'npm'));
}

/** Where node's headers are: npm's nodedir setting, else the prefix node is installed in, if it has them. */
function findNodeDir() {
  const configured = process.env.npm_config_nodedir;
  if (configured && existsSync(join(configured, 'include', 'node', 'node_api.h'))) return configured;
  const prefix = resolve(dirname(process.execPath), '..');
  if (existsSync(join(prefix, 'include', 'node', 'node_api.h'))) return prefix;
  return undefined;
}

try {
  if (process.env.QCOWKIT_SKIP_NATIVE) warn('QCOWKIT_SKIP_NATIVE is set');
  if (process.platform === 'win32') warn('Windows has none of its system calls');

  const nodeGyp = findNodeGyp();
  if (!nodeGyp) warn("npm's node-gyp was not found");
  const nodeDir = findNodeDir();
  // Without local headers node-gyp would download them; refuse rather than reach for the network.
  if (!nodeDir) warn(`node headers not found next to ${process.execPath} (set npm's nodedir)`);

  rmSync(join(here, 'build'), { recursive: true, force: true });
  const args = [nodeGyp, 'rebuild', '--release', `--directory=${here}`, `--nodedir=${nodeDir}`];
  const result = spawnSync(process.execPath, args, {
    cwd: here,
    encoding: 'utf8',
    timeout: TIMEOUT_MS,
    env: { ...process.env, npm_config_nodedir: nodeDir },
  });
  const log = `$ ${process.execPath} ${args.join(' ')}\n${result.stdout ?? ''}${result.stderr ?? ''}${
    result.error ? `\n${result.error}` : ''
  }`;
  mkdirSync(join(here, 'build'), { recursive: true });
  writeFileSync(logFile, log);
  if (result.error || result.status !== 0 || !existsSync(output)) {
    const why = result.error ? result.error.message : result.status !== 0 ? `node-gyp exited ${result.status}` : 'no output';
    warn(`${why}; see ${logFile}`);
  }

  // Prove it loads and answers before leaving it for the engine.
  const addon = createRequire(import.meta.url)(output);
  const missing = FUNCTIONS.filter((name) => typeof addon[name] !== 'function');
  if (missing.length > 0 || addon.abi !== ABI) {
    rmSync(output, { force: true });
    warn(`built addon lacks ${missing.join(', ') || `abi ${ABI}`}`);
  }
  if (wantPrebuilt) {
    mkdirSync(prebuiltDir, { recursive: true });
    copyFileSync(output, join(prebuiltDir, 'qcowkit_native.node'));
    const symbols = spawnSync('objdump', ['-T', output], { encoding: 'utf8' });
    const versions = [...new Set((symbols.stdout ?? '').match(/GLIBC_[0-9.]+/g) ?? [])].sort();
    console.log(`prebuilt: ${join(prebuiltDir, 'qcowkit_native.node')} (needs ${versions.join(' ') || 'no versioned glibc symbols / objdump missing'})`);
  }
} catch (error) {
  rmSync(output, { force: true });
  warn(error instanceof Error ? error.message.split('\n')[0] : String(error));
}
