/**
 * A kill campaign: for each scenario, kills at chosen writes (spread over the whole write sequence, the first
 * and last included) and after random delays (between the first write and the end of a complete run), and a
 * table of outcomes. Used by scripts/kill-campaign.ts (long runs) and kill.crash.test.ts (the short CI run).
 */
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { discardScenario, killOnce, prepareScenario, type KillResult, type KillScenario, type Outcome } from './kill-harness.js';
import { makeKillFixtures } from './kill-scenarios.js';

export interface CampaignOptions {
  /** Runs per scenario: half at chosen writes, half after random delays. */
  runsPerScenario: number;
  seed?: number;
  /** Called after each run (progress). */
  onResult?: (scenario: KillScenario, result: KillResult) => void;
  /** Called when a scenario is done (a long campaign cut short keeps the rows it finished). */
  onRow?: (row: ScenarioRow) => void;
}

export interface ScenarioRow {
  name: string;
  writes: number;
  runs: number;
  kills: number;
  atWrite: number;
  random: number;
  /** Random-delay runs the command finished before the kill. */
  completed: number;
  outcomes: Record<Outcome, number>;
  /** Runs that were not clean, leaked or not-made: what happened. */
  failures: KillResult[];
}

const BAD: Outcome[] = ['corrupt', 'unreadable', 'wrong-data'];

function xorshift(seed: number): () => number {
  let s = seed || 1;
  return () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) / 0x100000000;
  };
}

/** Chosen write numbers (1-based): every one when they are few, else the ends and an even spread with jitter. */
function chosenWrites(writes: number, count: number, random: () => number): number[] {
  if (count === 1) return [1 + Math.floor(random() * writes)];
  if (writes <= count) return Array.from({ length: count }, (_, i) => (i % writes) + 1);
  const out = [1, writes];
  for (let i = 2; i < count; i++) {
    const slot = writes / (count - 2);
    out.push(Math.min(writes, 1 + Math.floor((i - 2) * slot + random() * slot)));
  }
  return out.slice(0, count);
}

export async function runCampaign(scenarios: KillScenario[], options: CampaignOptions): Promise<ScenarioRow[]> {
  const random = xorshift(options.seed ?? 20240601);
  const work = mkdtempSync(join(tmpdir(), 'qcowkit-kill-'));
  const rows: ScenarioRow[] = [];
  try {
    const fixtures = join(work, 'fixtures');
    mkdirSync(fixtures);
    makeKillFixtures(fixtures);
    for (const scenario of scenarios) {
      const prepared = await prepareScenario(scenario, fixtures, work);
      const row: ScenarioRow = {
        name: scenario.name,
        writes: prepared.writes,
        runs: 0,
        kills: 0,
        atWrite: 0,
        random: 0,
        completed: 0,
        outcomes: { clean: 0, leaked: 0, 'not-made': 0, corrupt: 0, unreadable: 0, 'wrong-data': 0 },
        failures: [],
      };
      const atWrite = Math.ceil(options.runsPerScenario / 2);
      const plan: Array<{ atWrite: number } | { afterMs: number }> = chosenWrites(prepared.writes, atWrite, random).map((n) => ({ atWrite: n }));
      const span = Math.max(1, prepared.fullMs * 1.05 - prepared.firstWriteMs * 0.95);
      for (let i = atWrite; i < options.runsPerScenario; i++) plan.push({ afterMs: Math.round(prepared.firstWriteMs * 0.95 + random() * span) });
      for (const how of plan) {
        const result = await killOnce(prepared, how);
        row.runs++;
        if (result.killed) {
          row.kills++;
          if ('atWrite' in how) row.atWrite++;
          else row.random++;
        } else {
          row.completed++;
        }
        row.outcomes[result.outcome]++;
        if (BAD.includes(result.outcome)) row.failures.push(result);
        options.onResult?.(scenario, result);
      }
      discardScenario(prepared);
      rows.push(row);
      options.onRow?.(row);
    }
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  return rows;
}

/** The campaign's table, as Markdown. */
export function formatCampaign(rows: ScenarioRow[]): string {
  const header = '| command | writes | kills | at write | random | completed | clean | leaked only | not made yet | corrupt | unreadable | wrong data |';
  const lines = [header, '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|'];
  const total = { writes: 0, kills: 0, atWrite: 0, random: 0, completed: 0, clean: 0, leaked: 0, notMade: 0, corrupt: 0, unreadable: 0, wrong: 0 };
  for (const r of rows) {
    const o = r.outcomes;
    lines.push(`| ${r.name} | ${r.writes} | ${r.kills} | ${r.atWrite} | ${r.random} | ${r.completed} | ${o.clean} | ${o.leaked} | ${o['not-made']} | ${o.corrupt} | ${o.unreadable} | ${o['wrong-data']} |`);
    total.kills += r.kills;
    total.atWrite += r.atWrite;
    total.random += r.random;
    total.completed += r.completed;
    total.clean += o.clean;
    total.leaked += o.leaked;
    total.notMade += o['not-made'];
    total.corrupt += o.corrupt;
    total.unreadable += o.unreadable;
    total.wrong += o['wrong-data'];
  }
  lines.push(
    `| **all** | | **${total.kills}** | ${total.atWrite} | ${total.random} | ${total.completed} | ${total.clean} | ${total.leaked} | ${total.notMade} | **${total.corrupt}** | **${total.unreadable}** | **${total.wrong}** |`,
  );
  return lines.join('\n');
}
