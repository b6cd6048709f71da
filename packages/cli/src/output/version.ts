import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { resolve } from 'node:path';

/** Set by the bundle (scripts/bundle.mjs) to package.json's version: no lookup at start-up. */
declare const QCOWKIT_BUNDLED_VERSION: string | undefined;

/**
 * The CLI's version, from its own package.json: written into the bundle when it is built, else resolved from the
 * running script (bin/qcowkit.js, or dist/main.js), in the repository and installed.
 */
export function cliVersion(): string {
  if (typeof QCOWKIT_BUNDLED_VERSION === 'string') return QCOWKIT_BUNDLED_VERSION;
  try {
    const require = createRequire(resolve(process.argv[1] ?? 'qcowkit'));
    const manifest = JSON.parse(readFileSync(require.resolve('@qcowkit/cli/package.json'), 'utf8')) as { version?: unknown };
    return typeof manifest.version === 'string' ? manifest.version : 'unknown';
  } catch {
    return 'unknown';
  }
}
