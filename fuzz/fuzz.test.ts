import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { runFuzz, TARGETS } from './run.js';

/**
 * The short fuzz run of the test suite: every target, coverage-guided, for a few seconds each, seeded with the
 * fixture corpus and the regression set. A finding fails the run; its input is kept in the temporary findings
 * directory named in the failure (move it to fuzz/regressions/ once fixed). The long run is `fuzz/run.ts`.
 */
describe('short fuzz run', () => {
  it('finds nothing, and really executes and covers', async () => {
    const findingsDir = mkdtempSync(join(tmpdir(), 'qcowkit-fuzz-findings-'));
    const seconds = Number(process.env['QCOWKIT_FUZZ_SECONDS'] ?? 12);
    const result = await runFuzz({ targets: TARGETS, runs: 1_000_000_000, seconds, jobs: 1, seed: Number(process.env['QCOWKIT_FUZZ_SEED'] ?? 1), findingsDir, log: () => {} });
    expect(result.findings, JSON.stringify(result.findings, null, 2)).toEqual([]);
    for (const target of TARGETS) {
      expect(result.executions[target], target).toBeGreaterThan(10);
      expect(result.covered[target], target).toBeGreaterThan(50);
    }
    // Findings stay for inspection when there are any.
    rmSync(findingsDir, { recursive: true, force: true });
  }, 600_000);
});
