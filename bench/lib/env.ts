/** Facts about the machine and the build, printed at the top of every report. */
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { cpus, release, totalmem } from 'node:os';
import { join } from 'node:path';
import { hasGnuTime } from './process.js';

function firstLine(argv: string[], cwd?: string): string {
  const r = spawnSync(argv[0]!, argv.slice(1), { cwd, encoding: 'utf8' });
  return r.status === 0 ? r.stdout.split('\n')[0]!.trim() : 'unknown';
}

function newestMtime(dir: string, accept: (name: string) => boolean): { path: string; mtimeMs: number } | undefined {
  let best: { path: string; mtimeMs: number } | undefined;
  if (!existsSync(dir)) return best;
  for (const entry of readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (!entry.isFile()) continue;
    const path = join(entry.parentPath ?? (entry as unknown as { path: string }).path, entry.name);
    if (!accept(path)) continue;
    const mtimeMs = statSync(path).mtimeMs;
    if (!best || mtimeMs > best.mtimeMs) best = { path, mtimeMs };
  }
  return best;
}

export interface Environment {
  lines: string[];
  /** Set when the compiled CLI is older than its sources: the numbers would not describe the working tree. */
  staleBuild?: string;
  missingBuild?: string;
}

export function describeEnvironment(repoRoot: string): Environment {
  const cpu = cpus();
  const gitHead = firstLine(['git', 'rev-parse', '--short', 'HEAD'], repoRoot);
  const dirty = spawnSync('git', ['status', '--porcelain', '--', 'packages'], { cwd: repoRoot, encoding: 'utf8' }).stdout?.split('\n').filter(Boolean).length ?? 0;
  const addon = existsSync(join(repoRoot, 'packages/qcow2/native/build/Release/qcowkit_native.node')) ? 'built' : 'not built';
  const lines = [
    `node ${process.version}; ${firstLine(['qemu-img', '--version'])}`,
    `Linux ${release()}; ${cpu.length} × ${cpu[0]?.model ?? 'unknown CPU'}; ${(totalmem() / 2 ** 30).toFixed(0)} GiB RAM`,
    `git ${gitHead}${dirty > 0 ? ` with ${dirty} uncommitted change(s) under packages/` : ''}; seek-hole addon ${addon}`,
    hasGnuTime() ? 'peak RSS and CPU time from GNU time (/usr/bin/time -f "%M %U %S")' : 'GNU time not found: peak RSS and CPU time are n/a (apt-get install -y time)',
  ];
  const env: Environment = { lines };
  const bundle = join(repoRoot, 'packages/cli/dist/qcowkit.cjs');
  const built = [join(repoRoot, 'packages/cli/dist/main.js'), join(repoRoot, 'packages/qcow2/dist/index.js'), bundle];
  const missing = built.filter((p) => !existsSync(p));
  if (missing.length > 0) {
    env.missingBuild = `not built: ${missing.join(', ')} (run \`npm run build\` or pass --build)`;
    return env;
  }
  // tsc -b re-emits only changed files but always rewrites tsconfig.tsbuildinfo when it builds anything.
  // Only what tsconfig compiles: no tests, no test-support.
  const isSource = (path: string): boolean =>
    path.endsWith('.ts') && !path.endsWith('.test.ts') && !path.endsWith('.d.ts') && !path.includes('/test-support/');
  for (const pkg of ['qcow2', 'snapshot', 'cli']) {
    const info = join(repoRoot, 'packages', pkg, 'tsconfig.tsbuildinfo');
    const builtAt = existsSync(info) ? statSync(info).mtimeMs : 0;
    // The bin runs the bundle only when it is newer than every TypeScript build; else the slower dist/main.js.
    if (builtAt > statSync(bundle).mtimeMs) {
      env.staleBuild = `packages/cli/dist/qcowkit.cjs is older than the last tsc build of packages/${pkg}: qcowkit would start unbundled; rebuild (--build or npm run build)`;
      break;
    }
    const newest = newestMtime(join(repoRoot, 'packages', pkg, 'src'), isSource);
    if (newest && newest.mtimeMs > builtAt) {
      env.staleBuild = `packages/${pkg} was built before ${newest.path.slice(repoRoot.length + 1)} last changed: rebuild (--build), or the numbers describe an older engine`;
      break;
    }
  }
  return env;
}
