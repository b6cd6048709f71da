import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { hasQemuImg, requireQemuImg } from '../../../../fixtures/corpus.js';
import { makeCloudSeeds, mutateCloud, type CloudSeed } from '../test-support/cloud-mutations.js';
import { CLI_MAIN } from '../test-support/run-cli.js';

/**
 * Mutated VHD, VMDK and VHDX images (cloud-mutations.ts) through info, map and convert, judged against qemu-img on
 * the same file with the rules of the qcow2 hostile tests: no stack trace, one line on stderr for an error, the
 * process ends (a 60 s limit is a hang), and exit 0 only where qemu-img opens the image, with the data qemu-img
 * reads. The wide sweep is `scripts/hostile-sweep.ts --cloud`.
 */
requireQemuImg();

const MUTANTS_PER_SEED = 12;

interface Run {
  status: number;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

describe.runIf(hasQemuImg())('hostile cloud-format images against qemu-img', { timeout: 900_000 }, () => {
  const work = mkdtempSync(join(tmpdir(), 'qcowkit-formats-hostile-'));
  afterAll(() => rmSync(work, { recursive: true, force: true }));
  const run = (command: string, args: string[]): Run => {
    const r = spawnSync(command, args, { cwd: work, encoding: 'utf8', timeout: 60_000, maxBuffer: 256 * 1024 * 1024 });
    return { status: r.status ?? -1, stdout: r.stdout ?? '', stderr: r.stderr ?? '', timedOut: r.signal !== null };
  };
  const ours = (args: string[]): Run => run(process.execPath, [CLI_MAIN, ...args]);
  let seeds: CloudSeed[] = [];

  it('makes the seeds', () => {
    seeds = makeCloudSeeds(work);
    expect(seeds.length).toBeGreaterThan(0);
  });

  for (const seedName of ['vpc-dynamic.vhd', 'vpc-fixed.vhd', 'vmdk-sparse.vmdk', 'vmdk-stream-qemu.vmdk', 'vmdk-stream.vmdk', 'vhdx-dynamic.vhdx']) {
    it(`${seedName}: ${MUTANTS_PER_SEED} mutants`, () => {
      const seed = seeds.find((s) => s.name === seedName)!;
      const findings: string[] = [];
      for (let index = 0; index < MUTANTS_PER_SEED; index++) {
        const mutant = mutateCloud(seed, index);
        writeFileSync(join(work, 'm.img'), mutant.bytes);
        const f = ['-f', mutant.format];
        const qInfo = run('qemu-img', ['info', ...f, 'm.img']);
        const qConvert = run('qemu-img', ['convert', ...f, '-O', 'raw', 'm.img', 'q.raw']);
        for (const [command, args] of [
          ['info', ['info', ...f, 'm.img']],
          ['map', ['map', ...f, '--output=json', 'm.img']],
          ['convert', ['convert', ...f, '-O', 'raw', 'm.img', 'k.raw']],
        ] as const) {
          const r = ours([...args]);
          const report = (what: string): number => findings.push(`${mutant.name}: ${command}: ${what}`);
          if (r.timedOut) report('did not end within 60 s');
          if (/\n\s+at /.test(r.stderr)) report(`stack trace: ${r.stderr.slice(0, 300)}`);
          if (r.status !== 0 && (r.stderr.trim().split('\n').length !== 1 || !r.stderr.startsWith('qcowkit: '))) report(`stderr is not one 'qcowkit: FILE: message' line: ${r.stderr.slice(0, 300)}`);
          if (r.status === 0 && qInfo.status !== 0) report(`exit 0 where qemu-img cannot open the image: ${qInfo.stderr.trim()}`);
          if (command === 'convert' && r.status === 0 && qInfo.status === 0) {
            if (qConvert.status !== 0) report(`exit 0 where qemu-img convert fails: ${qConvert.stderr.trim()}`);
            else if (!readFileSync(join(work, 'k.raw')).equals(readFileSync(join(work, 'q.raw')))) report('exit 0 with other data than qemu-img reads');
          }
        }
      }
      expect(findings).toEqual([]);
    });
  }
});
