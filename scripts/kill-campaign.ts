/**
 * Kill campaign: every writing qcowkit command killed with SIGKILL at chosen writes and at random moments, each
 * result judged with qemu-img (see packages/cli/src/test-support/kill-harness.ts and docs/crash-safety.md).
 *
 *   npm run build && node --import tsx scripts/kill-campaign.ts [--kills N] [--only REGEX] [--seed S]
 *
 * --kills is the total number of runs (default 2200), spread evenly over the scenarios. Prints a Markdown table
 * (command × kills × clean × leaked-only × … × corrupt × unreadable × wrong data) and every bad run; exits 1
 * when any run left a corrupt, unreadable or wrong image.
 */
import { formatCampaign, runCampaign } from '../packages/cli/src/test-support/kill-campaign.js';
import { killScenarios } from '../packages/cli/src/test-support/kill-scenarios.js';

function option(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

const total = Number(option('--kills') ?? 2200);
const only = option('--only');
const seed = Number(option('--seed') ?? Date.now() % 1_000_000);
const scenarios = killScenarios.filter((s) => only === undefined || new RegExp(only).test(s.name));
const runsPerScenario = Math.max(2, Math.ceil(total / scenarios.length));
const started = Date.now();
console.log(`kill campaign: ${scenarios.length} commands × ${runsPerScenario} runs, seed ${seed}`);

let done = 0;
const rows = await runCampaign(scenarios, {
  runsPerScenario,
  seed,
  onResult: (scenario, result) => {
    done++;
    const mark = result.outcome === 'clean' || result.outcome === 'leaked' || result.outcome === 'not-made' ? '' : `  <-- ${result.detail}`;
    if (mark !== '' || done % 50 === 0) console.log(`[${done}] ${scenario.name} ${result.how}: ${result.outcome}${mark}`);
  },
  onRow: (row) => console.log(`row: ${formatCampaign([row]).split('\n')[2]}`),
});
console.log(`\n${formatCampaign(rows)}\n`);
console.log(`seed ${seed}, ${((Date.now() - started) / 60000).toFixed(1)} minutes`);
const failures = rows.flatMap((r) => r.failures.map((f) => `${r.name} ${f.how}: ${f.outcome}: ${f.detail}`));
for (const line of failures) console.log(line);
process.exitCode = failures.length > 0 ? 1 : 0;
