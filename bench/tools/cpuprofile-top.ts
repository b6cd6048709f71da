/**
 * Summarizes V8 .cpuprofile files (from `node --cpu-prof`): the functions with the most self time, and self
 * time per source file. Several profiles (e.g. one per run) are added together.
 *
 *   node --import tsx bench/tools/cpuprofile-top.ts [--top N] PROFILE.cpuprofile...
 */
import { readFileSync } from 'node:fs';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number; columnNumber: number };
  hitCount?: number;
  children?: number[];
}

interface Profile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples?: number[];
  timeDeltas?: number[];
}

function shortUrl(url: string): string {
  if (url === '') return '';
  const stripped = url.replace(/^file:\/\//, '');
  const nm = stripped.lastIndexOf('/node_modules/');
  if (nm >= 0) return stripped.slice(nm + 1);
  const pk = stripped.indexOf('/packages/');
  if (pk >= 0) return stripped.slice(pk + 1);
  return stripped;
}

function main(): void {
  // `| head` closes the pipe early: stop quietly.
  process.stdout.on('error', (error: NodeJS.ErrnoException) => {
    if (error.code === 'EPIPE') process.exit(0);
    throw error;
  });
  const args = process.argv.slice(2);
  let top = 25;
  const files: string[] = [];
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--top') top = Number(args[++i]);
    else files.push(args[i]!);
  }
  if (files.length === 0) {
    console.error('usage: cpuprofile-top.ts [--top N] PROFILE.cpuprofile...');
    process.exitCode = 64;
    return;
  }
  const byFunction = new Map<string, number>();
  const byFile = new Map<string, number>();
  let total = 0;
  let wall = 0;
  for (const file of files) {
    const profile = JSON.parse(readFileSync(file, 'utf8')) as Profile;
    wall += (profile.endTime - profile.startTime) / 1000;
    const nodes = new Map(profile.nodes.map((n) => [n.id, n]));
    // Self time per node: the time deltas of the samples that landed in it (exact), not hitCount × interval.
    const self = new Map<number, number>();
    const samples = profile.samples ?? [];
    const deltas = profile.timeDeltas ?? [];
    for (let i = 0; i < samples.length; i++) {
      // timeDeltas[i] is the time before sample i; attribute the interval after a sample to it.
      const dt = (deltas[i + 1] ?? 0) / 1000;
      self.set(samples[i]!, (self.get(samples[i]!) ?? 0) + dt);
    }
    for (const [id, ms] of self) {
      const node = nodes.get(id)!;
      const f = node.callFrame;
      const url = shortUrl(f.url);
      const name = `${f.functionName || '(anonymous)'}${url ? `  ${url}:${f.lineNumber + 1}` : ''}`;
      byFunction.set(name, (byFunction.get(name) ?? 0) + ms);
      const fileKey = url || f.functionName;
      byFile.set(fileKey, (byFile.get(fileKey) ?? 0) + ms);
      total += ms;
    }
  }
  const print = (title: string, map: Map<string, number>): void => {
    console.log(`\n${title}`);
    console.log('   self ms   share  ');
    for (const [name, ms] of [...map].sort((a, b) => b[1] - a[1]).slice(0, top)) {
      console.log(`${ms.toFixed(1).padStart(10)}  ${((100 * ms) / total).toFixed(1).padStart(5)}%  ${name}`);
    }
  };
  console.log(`${files.length} profile(s); profiled wall ${wall.toFixed(0)} ms, sampled ${total.toFixed(0)} ms`);
  print('top functions by self time', byFunction);
  print('self time by file', byFile);
}

main();
