/** The markdown report: one summary table, then per benchmark its table, commands, images and checks. */
import type { BenchResult, CaseResult } from './bench.js';
import type { Environment } from './env.js';
import { formatCommand, type CacheMode } from './process.js';
import { formatBytes, formatMs, formatRatio, percent } from './stats.js';

export interface ReportHeader {
  startedAt: Date;
  mode: CacheMode;
  env: Environment;
  /** How this report was produced, e.g. `npm run bench -- convert-raw`. */
  invocation: string;
  /** 1-minute load average at the start and at the end, and the CPU count. */
  load: { start: number; end: number; cpus: number };
}

function table(headers: string[], rows: string[][]): string {
  const line = (cells: string[]): string => `| ${cells.join(' | ')} |`;
  return [line(headers), line(headers.map(() => '---')), ...rows.map(line)].join('\n');
}

function rss(kib: number): string {
  return Number.isFinite(kib) ? formatBytes(kib * 1024) : 'n/a';
}

/** GNU time counts CPU time in 10 ms ticks. */
function cpu(ms: number): string {
  if (!Number.isFinite(ms)) return 'n/a';
  return ms < 10 ? '<10 ms' : formatMs(ms);
}

function verdict(c: CaseResult): string {
  if (!Number.isFinite(c.ratio)) return 'n/a';
  return c.ratio <= 1 ? `${formatRatio(c.ratio)} ✅` : `${formatRatio(c.ratio)}`;
}

function check(c: CaseResult): string {
  return c.outputsMatch === undefined ? '–' : c.outputsMatch ? 'same' : '**DIFFERENT**';
}

function caseRow(c: CaseResult): string[] {
  return [
    c.name,
    `${formatMs(c.qemu.medianMs)} (${formatMs(c.qemu.minMs)})`,
    `${formatMs(c.qcowkit.medianMs)} (${formatMs(c.qcowkit.minMs)})`,
    verdict(c),
    `${cpu(c.qemu.medianCpuMs)} / ${cpu(c.qcowkit.medianCpuMs)}`,
    `${rss(c.qemu.peakRssKiB)} / ${rss(c.qcowkit.peakRssKiB)}`,
    check(c),
  ];
}

const CASE_HEADERS = ['case', 'qemu-img median (min)', 'qcowkit median (min)', 'ratio', 'CPU user+sys qemu-img / qcowkit', 'peak RSS qemu-img / qcowkit', 'outputs'];

export function renderReport(header: ReportHeader, results: readonly BenchResult[]): string {
  const out: string[] = [];
  const when = header.startedAt.toISOString().replace('T', ' ').slice(0, 16);
  out.push(`# qcowkit benchmarks, ${when} UTC`, '');
  out.push(`Produced by \`${header.invocation}\` (from the repository root).`, '');
  out.push(
    header.mode === 'warm'
      ? 'Mode **warm**: the page cache is kept; each tool gets one untimed warm-up run, then the timed runs alternate between the tools (A B, B A, ...), with `sync` before each run.'
      : 'Mode **cold**: `sync; echo 3 > /proc/sys/vm/drop_caches` before every run (no warm-up); runs alternate between the tools.',
    '',
  );
  out.push(
    '**ratio** = qcowkit median wall time / qemu-img median wall time, both measured in this run: lower is better, the target is ≤ 1.00 (✅). ' +
      'Times are whole processes (startup to exit). These are measurements, not tests: nothing here passes or fails on time.',
    '',
  );
  out.push(...header.env.lines.map((l) => `- ${l}`));
  const { start, end, cpus } = header.load;
  out.push(`- load average (1 min): ${start.toFixed(2)} at start, ${end.toFixed(2)} at end, on ${cpus} CPUs`);
  if (Math.max(start, end) > cpus * 0.75) {
    out.push(`- ⚠️ the machine was busy with other work during this run: times are noisy (compare the min columns too, and rerun on an idle machine before drawing fine conclusions)`);
  }
  if (header.env.staleBuild) out.push(`- ⚠️ ${header.env.staleBuild}`);
  out.push('');
  for (const r of results) {
    if (r.table === undefined) continue;
    out.push(`## ${r.title}`, '', ...r.table, '');
  }
  out.push('## Summary', '');
  out.push(
    table(
      ['benchmark', 'case', 'qemu-img median', 'qcowkit median', 'ratio', 'outputs'],
      results.flatMap((r) => r.cases.map((c) => [r.name, c.name, formatMs(c.qemu.medianMs), formatMs(c.qcowkit.medianMs), verdict(c), check(c)])),
    ),
    '',
  );
  for (const r of results) {
    out.push(`## ${r.name}: ${r.title}`, '', r.measures, '');
    out.push(table(CASE_HEADERS, r.cases.map(caseRow)), '');
    for (const c of r.cases) {
      out.push(`### ${r.name} / ${c.name}`, '');
      if (c.image) {
        const m = c.image.facts.qemuMap;
        const v = c.image.facts.virtualSize;
        out.push(`- image: \`${c.image.path}\`, ${formatBytes(c.image.fileSize)} file${c.image.reused ? ' (cached)' : ` (built in ${formatMs(c.image.buildMs)})`}`);
        out.push(`- ${c.image.facts.description}`);
        for (const d of c.image.facts.details) out.push(`- ${d}`);
        out.push(`- qemu-img map: data ${percent(m.data, v)}, zero ${percent(m.zero, v)}, unallocated ${percent(m.unallocated, v)} (${m.entries} entries)`);
      }
      out.push(`- ${c.runs} timed runs each; qemu-img: ${c.qemu.samples.map((s) => formatMs(s.wallMs)).join(', ')}; qcowkit: ${c.qcowkit.samples.map((s) => formatMs(s.wallMs)).join(', ')}`);
      for (const line of c.checks) out.push(`- ${line}`);
      out.push('', '```', formatCommand(c.qemu.argv), formatCommand(c.qcowkit.argv), '```', '');
    }
    for (const note of r.notes) out.push(`> ${note}`, '');
  }
  return `${out.join('\n').trimEnd()}\n`;
}
