/**
 * The whole repository type-checks, tests included: the package builds (tsc -b) compile only src/ outside the
 * tests, and vitest strips types without checking them, so a test file could drift from the code it tests.
 */
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { expect, it } from 'vitest';

const ROOT = join(import.meta.dirname, '..');

it('npm run typecheck (tsc -p tsconfig.json --noEmit) reports no error', () => {
  const r = spawnSync(process.execPath, [join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.json', '--noEmit'], { cwd: ROOT, encoding: 'utf8' });
  expect(r.stdout + r.stderr).toBe('');
  expect(r.status).toBe(0);
}, 300_000);
