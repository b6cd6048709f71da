import { describe, expect, it } from 'vitest';
import { requireQemuImg } from '../../../../fixtures/corpus.js';
import { formatCampaign, runCampaign } from '../test-support/kill-campaign.js';
import { killScenarios } from '../test-support/kill-scenarios.js';

/**
 * The short kill campaign: every writing command (kill-scenarios.ts) killed with SIGKILL once at a write chosen
 * by the seed (QCOWKIT_KILL_SEED) and once after a random delay; after each kill qemu-img check finds no corruption
 * (leaks allowed), both tools open the image and read the same data, and the guest data follows the command's
 * rule. The long campaign (≥ 2,000 kills) is scripts/kill-campaign.ts.
 */
requireQemuImg();

describe('every writing command killed at chosen writes and at random moments', () => {
  it('leaves no corrupt, unreadable or wrong image', async () => {
    const rows = await runCampaign(killScenarios, { runsPerScenario: 2, seed: Number(process.env['QCOWKIT_KILL_SEED'] ?? 1) });
    const table = formatCampaign(rows);
    const failures = rows.flatMap((r) => r.failures.map((f) => `${r.name} ${f.how}: ${f.outcome}: ${f.detail}`));
    expect(failures, table).toEqual([]);
    // Every command was really killed (a campaign that never killed proves nothing).
    for (const row of rows) expect(row.kills, `${row.name} was never killed\n${table}`).toBeGreaterThan(0);
  }, 1_500_000);
});
