/**
 * map: `qcowkit map --output=json IMG` against `qemu-img map --output=json IMG`: metadata only (L1/L2 tables),
 * no guest data is read. On a 100 GiB image with three small written regions the work is tiny, so the time is
 * mostly process startup; the "startup" case (`--version`) shows that fixed cost on its own.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { comparePair, type BenchContext, type BenchResult, type Benchmark, type CaseResult } from './lib/bench.js';
import { mixed2g, mixed2gCompressed, sparse100g } from './lib/catalog.js';
import { ensureImage, type ImageMaker } from './lib/images.js';
import { runMeasured } from './lib/process.js';
import { formatMs, median, min } from './lib/stats.js';

function firstDifferentLine(a: string, b: string): string {
  const la = a.split('\n');
  const lb = b.split('\n');
  for (let i = 0; i < Math.max(la.length, lb.length); i++) {
    if (la[i] !== lb[i]) return `line ${i + 1}: qemu-img \`${la[i] ?? '<eof>'}\` vs qcowkit \`${lb[i] ?? '<eof>'}\``;
  }
  return 'no line differs';
}

function mapCase(ctx: BenchContext, name: string, maker: ImageMaker<unknown>, runs: number): CaseResult {
  const image = ensureImage(maker, ctx.log);
  const qemuOut = join(ctx.workDir, `${name}.qemu-img.map.json`);
  const qcowkitOut = join(ctx.workDir, `${name}.qcowkit.map.json`);
  const result = comparePair(
    ctx,
    name,
    runs,
    {
      qemuArgs: ['map', '--output=json', image.path],
      qcowkitArgs: ['map', '--output=json', image.path],
      qemuStdout: qemuOut,
      qcowkitStdout: qcowkitOut,
    },
    image,
  );
  const a = readFileSync(qemuOut, 'utf8');
  const b = readFileSync(qcowkitOut, 'utf8');
  result.outputsMatch = a === b;
  const entries = a.split('\n').filter((line) => line.trim() !== '').length;
  result.checks.push(a === b ? `outputs identical (${entries} map entries, ${a.length} bytes)` : `OUTPUTS DIFFER: ${firstDifferentLine(a, b)}`);
  return result;
}

function startupCase(ctx: BenchContext, runs: number): CaseResult {
  const result = comparePair(ctx, 'startup (--version)', runs, { qemuArgs: ['--version'], qcowkitArgs: ['--version'] });
  result.checks.push('no image: the fixed cost of starting each program (node + module loading for qcowkit)');
  // The floor for any node program on this machine, measured the same way (not part of the ratio).
  const node = Array.from({ length: runs }, () => runMeasured({ argv: ['node', '-e', '0'], cwd: ctx.repoRoot }).wallMs);
  result.checks.push(`for reference, \`node -e 0\` here: median ${formatMs(median(node))} (min ${formatMs(min(node))}) over ${runs} runs`);
  return result;
}

export const map: Benchmark = {
  name: 'map',
  title: 'map --output=json',
  measures:
    'Wall time of a whole `map --output=json IMG` process (stdout to a file). Only metadata is read: the L1 table ' +
    'and the L2 tables it points to. The 100 GiB sparse image has 200 L1 entries and 3 L2 tables, so its time is ' +
    'close to pure startup (compare with the `--version` case); the 2 GiB mixed images give ~1000 map entries. ' +
    'Both outputs are checked to be byte-identical.',
  defaultRuns: 10,
  run(ctx: BenchContext): BenchResult {
    const runs = ctx.runs ?? this.defaultRuns;
    return {
      name: this.name,
      title: this.title,
      measures: this.measures,
      cases: [
        startupCase(ctx, runs),
        mapCase(ctx, 'sparse-100g', sparse100g as ImageMaker<unknown>, runs),
        mapCase(ctx, 'mixed-2g', mixed2g as ImageMaker<unknown>, runs),
        mapCase(ctx, 'mixed-2g-compressed', mixed2gCompressed as ImageMaker<unknown>, runs),
      ],
      notes: [],
    };
  },
};
