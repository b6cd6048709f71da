import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { resolve } from 'node:path';

/**
 * The CLI's version, from its own package.json: resolved from the running script (bin/qcowkit.js, or
 * dist/main.js), which works for the ES modules and the CommonJS bundle alike, in the repository and installed.
 */
export function cliVersion(): string {
  try {
    const require = createRequire(resolve(process.argv[1] ?? 'qcowkit'));
    const manifest = JSON.parse(readFileSync(require.resolve('@qcowkit/cli/package.json'), 'utf8')) as { version?: unknown };
    return typeof manifest.version === 'string' ? manifest.version : 'unknown';
  } catch {
    return 'unknown';
  }
}
