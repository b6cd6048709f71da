// Builds dist/index.html: one self-contained page (the bundled engine and UI inline, the zstd WebAssembly
// module inline as base64), usable from file:// or any static host.
import { build } from 'esbuild';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);

// Type-check first (esbuild only strips types): the page's code against the DOM library, the tests against Node's.
const tsc = spawnSync(process.execPath, [require.resolve('typescript/bin/tsc'), '-p', join(here, 'tsconfig.json')], { stdio: 'inherit' });
if (tsc.status !== 0) process.exit(1);

const result = await build({
  entryPoints: [join(here, 'src/main.ts')],
  bundle: true,
  format: 'esm',
  platform: 'browser',
  target: 'es2022',
  minify: true,
  write: false,
  logLevel: 'warning',
  legalComments: 'inline',
});
const bundle = result.outputFiles[0].text.replaceAll('</script', '<\\/script');
const zstdMain = require.resolve('@bokuweb/zstd-wasm');
const zstdDir = zstdMain.slice(0, zstdMain.lastIndexOf('/dist/'));
const wasm = await readFile(join(zstdDir, 'dist/web/zstd.wasm'));
const template = await readFile(join(here, 'src/page.html'), 'utf8');
const page = template.replace('/*ZSTD_WASM*/', wasm.toString('base64')).replace('/*BUNDLE*/', () => bundle);
await mkdir(join(here, 'dist'), { recursive: true });
await writeFile(join(here, 'dist/index.html'), page);
console.log(`inspector: dist/index.html (${Math.round(page.length / 1024)} KiB)`);
