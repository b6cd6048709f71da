/**
 * convert-raw: `qcowkit convert -O raw SRC DST` against `qemu-img convert -O raw SRC DST` on a 2 GiB qcow2
 * image of mixed content, with and without compressed clusters. Both tools write a sparse raw file (zero
 * runs of 4 KiB or more become holes). The plain cases run both commands as typed (no flush of the output, the
 * `-t unsafe` default of both tools); the "both flush" cases give both tools `-t writeback`, so each ends with a
 * flush of the output. The outputs are compared once with cmp.
 */
import { rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { comparePair, type BenchContext, type BenchResult, type Benchmark, type CaseResult } from './lib/bench.js';
import { mixed2g, mixed2gCompressed } from './lib/catalog.js';
import { ensureImage, type ImageMaker, type MixedParams } from './lib/images.js';
import { formatCommand } from './lib/process.js';
import { formatBytes } from './lib/stats.js';
import { spawnSync } from 'node:child_process';

/**
 * Both tools open the target with cache=unsafe unless told otherwise (-t) and then never flush the output
 * (qemu-img 7.2 checked with strace: no fsync/fdatasync; qcowkit convert defaults to `-t unsafe` the same way).
 * With `flush`, both get `-t writeback` and end with a flush of the output (qemu-img: fdatasync; qcowkit: fsync),
 * so both cases compare the two tools doing the same work: without and with the final flush.
 */
export function convertCase(ctx: BenchContext, name: string, maker: ImageMaker<MixedParams>, runs: number, flush = false): CaseResult {
  const image = ensureImage(maker, ctx.log);
  const file = name.replace(/[^\w.-]+/g, '_');
  const qemuOut = join(ctx.workDir, `${file}.qemu-img.raw`);
  const qcowkitOut = join(ctx.workDir, `${file}.qcowkit.raw`);
  const result = comparePair(
    ctx,
    name,
    runs,
    {
      qemuArgs: ['convert', ...(flush ? ['-t', 'writeback'] : []), '-O', 'raw', image.path, qemuOut],
      qcowkitArgs: ['convert', ...(flush ? ['-t', 'writeback'] : []), '-O', 'raw', image.path, qcowkitOut],
      beforeQemu: () => rmSync(qemuOut, { force: true }),
      beforeQcowkit: () => rmSync(qcowkitOut, { force: true }),
    },
    image,
  );
  // One check of the last outputs: same bytes (cmp reads holes as zeros), and how sparse each one is.
  const cmp = spawnSync('cmp', [qemuOut, qcowkitOut], { encoding: 'utf8' });
  result.outputsMatch = cmp.status === 0;
  result.checks.push(
    cmp.status === 0 ? `outputs identical (\`${formatCommand(['cmp', qemuOut, qcowkitOut])}\`: exit 0)` : `OUTPUTS DIFFER: cmp exit ${cmp.status}: ${(cmp.stdout + cmp.stderr).trim()}`,
  );
  const q = statSync(qemuOut);
  const k = statSync(qcowkitOut);
  result.checks.push(
    `output size ${formatBytes(q.size)} / ${formatBytes(k.size)}; allocated on disk (st_blocks): qemu-img ${formatBytes(q.blocks * 512)}, qcowkit ${formatBytes(k.blocks * 512)}`,
  );
  rmSync(qemuOut, { force: true });
  rmSync(qcowkitOut, { force: true });
  return result;
}

export const convertRaw: Benchmark = {
  name: 'convert-raw',
  title: 'convert -O raw (qcow2 -> sparse raw)',
  measures:
    'Wall time of a whole `convert -O raw SRC DST` process, from spawn to exit, startup included (and, in the "both flush" cases, the final flush of the output). ' +
    'The source is a 2 GiB qcow2 image: about half incompressible data, a fifth written zeros (zero-flag clusters, ' +
    'zero-flag clusters that keep a host cluster, and ordinary clusters full of zero bytes), the rest unallocated. ' +
    'The compressed variant turns a fifth of the data into compressed clusters of text-like data (zlib). ' +
    'This stresses the read path (L2 lookups, large positional reads, decompression), zero detection and sparse writing.',
  defaultRuns: 5,
  run(ctx: BenchContext): BenchResult {
    const runs = ctx.runs ?? this.defaultRuns;
    return {
      name: this.name,
      title: this.title,
      measures: this.measures,
      cases: [
        convertCase(ctx, 'mixed-2g', mixed2g, runs),
        convertCase(ctx, 'mixed-2g-compressed', mixed2gCompressed, runs),
        convertCase(ctx, 'mixed-2g, both flush', mixed2g, runs, true),
        convertCase(ctx, 'mixed-2g-compressed, both flush', mixed2gCompressed, runs, true),
      ],
      notes: [
        'The first two cases are the plain commands as typed: both tools default to `-t unsafe` for the target and never ' +
          'flush it, so the data may still be dirty in the page cache when they exit (the harness runs `sync` before every run, untimed). ' +
          'The "both flush" cases give both tools `-t writeback`: each then ends with a flush of the output (qemu-img fdatasync, ' +
          'qcowkit fsync), so the time includes writing the data to disk. In both pairs the two tools do the same work.',
      ],
    };
  },
};
