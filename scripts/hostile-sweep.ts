/**
 * Hostile-image sweep: qemu-made images mutated (packages/cli/src/test-support/hostile-mutations.ts), each run
 * through qcowkit and qemu-img (info, check, convert), and every disagreement that matters reported:
 * - a stack trace, or more than one line on stderr for an error (check's report aside);
 * - a command that runs long (over 10 s) or a check that prints far more than qemu-img's (10× + 100 lines);
 * - exit 0 with other data than qemu-img reads (convert), or exit 0 where qemu-img cannot open the image.
 *
 *   npm run build && node --import tsx scripts/hostile-sweep.ts [--count N per seed] [--from I] [--cloud]
 *
 * --cloud sweeps VHD, VMDK and VHDX seeds (packages/cli/src/test-support/cloud-mutations.ts) instead.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeCloudSeeds, mutateCloud } from '../packages/cli/src/test-support/cloud-mutations.js';
import { makeSeeds, mutate } from '../packages/cli/src/test-support/hostile-mutations.js';
import { CLI_MAIN } from '../packages/cli/src/test-support/run-cli.js';

function option(name: string, fallback: number): number {
  const i = process.argv.indexOf(name);
  return i >= 0 ? Number(process.argv[i + 1]) : fallback;
}
const count = option('--count', 100);
const from = option('--from', 0);
const work = mkdtempSync(join(tmpdir(), 'qcowkit-hostile-sweep-'));

interface Run { status: number; stdout: string; stderr: string; ms: number }
function run(command: string, args: string[]): Run {
  const started = Date.now();
  const r = spawnSync(command, args, { cwd: work, encoding: 'utf8', timeout: 60_000, maxBuffer: 256 * 1024 * 1024 });
  return { status: r.status ?? (r.signal ? -2 : -1), stdout: r.stdout ?? '', stderr: r.stderr ?? '', ms: Date.now() - started };
}
const ours = (args: string[]): Run => run(process.execPath, [CLI_MAIN, ...args]);
const lines = (text: string): number => (text.trim() === '' ? 0 : text.trim().split('\n').length);

const findings: string[] = [];
let images = 0;
// --cloud: VHD, VMDK and VHDX seeds (cloud-mutations.ts) instead of qcow2 ones.
const cloud = process.argv.includes('--cloud');
const seeds: Array<{ name: string; bytes: Uint8Array; format?: string }> = cloud ? makeCloudSeeds(work) : makeSeeds(work);
const started = Date.now();
for (const seed of seeds) {
  for (let index = from; index < from + count; index++) {
    const mutant = cloud ? mutateCloud(seed as Parameters<typeof mutateCloud>[0], index) : mutate(seed, index);
    const format = seed.format ?? 'qcow2';
    const file = 'm.img';
    writeFileSync(join(work, file), mutant.bytes);
    images++;
    const report = (what: string): void => {
      findings.push(`${mutant.name}: ${what}`);
      console.log(`FINDING ${mutant.name}: ${what}`);
    };
    const qInfo = run('qemu-img', ['info', '-f', format, file]);
    const qCheck = run('qemu-img', ['check', '-f', format, file]);
    const qConvert = run('qemu-img', ['convert', '-f', format, '-O', 'raw', file, 'q.raw']);
    for (const [command, args] of [
      ['info', ['info', '-f', format, file]],
      ['check', ['check', '-f', format, file]],
      ['convert', ['convert', '-f', format, '-O', 'raw', file, 'k.raw']],
    ] as const) {
      const r = ours([...args]);
      if (/\n\s+at /.test(r.stderr) || /Error:|TypeError|RangeError/.test(r.stderr.split('\n').slice(1).join('\n'))) report(`${command}: stack trace: ${r.stderr.slice(0, 300)}`);
      if (r.status === -2) report(`${command}: killed by the 60 s timeout`);
      else if (r.ms > 10_000) report(`${command}: ${r.ms} ms`);
      if (command !== 'check' && r.status !== 0 && lines(r.stderr) !== 1) report(`${command}: ${lines(r.stderr)} lines on stderr: ${r.stderr.slice(0, 300)}`);
      if (command !== 'check' && r.status !== 0 && !r.stderr.startsWith('qcowkit: ')) report(`${command}: stderr is not 'qcowkit: FILE: message': ${r.stderr.slice(0, 200)}`);
      if (command === 'check') {
        const ourLines = lines(r.stdout) + lines(r.stderr);
        const theirLines = lines(qCheck.stdout) + lines(qCheck.stderr);
        if (ourLines > theirLines * 10 + 100) report(`check: ${ourLines} lines (qemu-img: ${theirLines})`);
        if (r.status === 0 && qCheck.status !== 0) report(`check: exit 0 where qemu-img check exits ${qCheck.status}: ${qCheck.stderr.split('\n')[0]}`);
      }
      if (command === 'info' && r.status === 0 && qInfo.status !== 0) report(`info: opens what qemu-img refuses: ${qInfo.stderr.trim()}`);
      if (command === 'convert' && r.status === 0) {
        if (qInfo.status !== 0) report(`convert: exit 0 where qemu-img cannot open the image: ${qInfo.stderr.trim()}`);
        else if (qConvert.status !== 0) report(`convert: exit 0 where qemu-img convert fails: ${qConvert.stderr.trim()}`);
        else if (!readFileSync(join(work, 'k.raw')).equals(readFileSync(join(work, 'q.raw')))) report('convert: exit 0 with other data than qemu-img reads');
      }
    }
  }
}
console.log(`${images} images, ${findings.length} findings, ${((Date.now() - started) / 60000).toFixed(1)} minutes`);
rmSync(work, { recursive: true, force: true });
process.exitCode = findings.length > 0 ? 1 : 0;
