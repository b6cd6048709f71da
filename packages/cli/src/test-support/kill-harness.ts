/**
 * The kill harness: runs a writing qcowkit command as a user would, kills it with SIGKILL — at a chosen write
 * (the command stops itself just before its Nth file write: QCOWKIT_CRASH_AT_WRITE, see
 * packages/qcow2/src/node/crash-point.ts) or after a random delay — and judges what is left with qemu-img:
 *
 * - `qemu-img check`: no corruption, no check error (leaked clusters are allowed: "leaked");
 * - the image opens in qemu-img and in qcowkit, and qcowkit reads exactly what qemu-img reads (qemu-img convert
 *   to raw, then qcowkit compare of the two);
 * - the guest data follows the scenario's rule (unchanged, old-or-new per sector, old-or-new as a whole…).
 *
 * Scenarios (one per writer) live in kill-scenarios.ts; scripts/kill-campaign.ts runs many kills and prints a
 * table; packages/cli/src/commands/kill.crash.test.ts runs a short campaign in the test suite.
 */
import { spawn, spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, openSync, readFileSync, readSync, closeSync, readdirSync, rmSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { CLI_MAIN } from './run-cli.js';

/**
 * What the guest data of an image may be after a kill, compared with the image before the command and after a
 * complete run:
 * - `same`: exactly as before (metadata-only commands, the top of a commit, the top of a safe rebase);
 * - `old-or-new`: every 512-byte sector as before or as after (guest writes, commit's base);
 * - `whole`: all as before, or all as after (snapshot apply, rebase -u, resize grow);
 * - `prefix`: the first min(size) bytes as before, the size the old or the new one (resize shrink);
 * - `made`: a new image (create, convert, dd): either not made yet (no qcow2 header) or every sector zero or
 *   as after.
 */
export type DataRule = 'same' | 'old-or-new' | 'whole' | 'prefix' | 'made';

export interface KillScenario {
  /** The table row: the command as a user would name it. */
  name: string;
  /** qcowkit's arguments, run in the scenario's directory. */
  args: string[];
  /** The images the command writes, and the rule each one's guest data follows. */
  images: Record<string, DataRule>;
  /** Snapshot commands: the snapshot list must be the old or the new one, each snapshot's contents intact. */
  snapshots?: boolean;
  /** Fixture images (from the harness's fixture set) copied into the scenario's directory before each run. */
  fixtures: string[];
  /**
   * The format of each written image that is not qcow2 (vpc, vmdk, vhdx): qemu-img is told it with -f, the
   * image counts as made once qemu-img opens it as that format, and qemu-img check runs where it supports it.
   */
  formats?: Record<string, string>;
  /** A fixture file fed to the command's standard input (`convert -f raw - OUT`), else stdin is closed. */
  stdin?: string;
}

export type Outcome = 'clean' | 'leaked' | 'corrupt' | 'unreadable' | 'wrong-data' | 'not-made';

export interface KillResult {
  outcome: Outcome;
  /** Whether the process was really killed (a random delay may outlast the command). */
  killed: boolean;
  how: string;
  detail: string;
}

const SECTOR = 512;
/** Guest views larger than this are compared with qemu-img compare instead of sector by sector. */
const MAX_RAW_COMPARE = 256 * 1024 * 1024;

function run(command: string, args: string[], cwd: string): { status: number; stdout: string; stderr: string } {
  const r = spawnSync(command, args, { cwd, encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
  return { status: r.status ?? -1, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
}

function must(command: string, args: string[], cwd: string): string {
  const r = run(command, args, cwd);
  if (r.status !== 0) throw new Error(`${command} ${args.join(' ')} (in ${cwd}): ${r.stdout}${r.stderr}`);
  return r.stdout;
}

/** -f FORMAT for qemu-img, for an image that is not qcow2 (never probed: a fixed VHD would probe as raw). */
function formatArgs(format: string | undefined): string[] {
  return format === undefined ? [] : ['-f', format];
}

/** A qcow2 image has its magic; another format is there once qemu-img opens the file as that format. */
function isImage(dir: string, image: string, format: string | undefined): boolean {
  if (format === undefined) return hasQcow2Magic(join(dir, image));
  return existsSync(join(dir, image)) && run('qemu-img', ['info', '-U', '-f', format, image], dir).status === 0;
}

function hasQcow2Magic(file: string): boolean {
  if (!existsSync(file) || statSync(file).size < 4) return false;
  const fd = openSync(file, 'r');
  try {
    const magic = Buffer.alloc(4);
    readSync(fd, magic, 0, 4, 0);
    return magic.readUInt32BE(0) === 0x514649fb;
  } finally {
    closeSync(fd);
  }
}

function copyInto(from: string, to: string, names: string[]): void {
  mkdirSync(to, { recursive: true });
  for (const name of names) cpSync(join(from, name), join(to, name));
}

interface Side {
  /** The image's path, in a directory that keeps its chain (for qemu-img compare). */
  file: string;
  size: number;
  /** Guest data when small enough to hold; undefined otherwise. */
  raw: Buffer | undefined;
  snapshots: string[];
}

function virtualSize(dir: string, image: string, format?: string): number {
  return (JSON.parse(must('qemu-img', ['info', '-U', ...formatArgs(format), '--output=json', image], dir)) as { 'virtual-size': number })['virtual-size'];
}

function snapshotNames(dir: string, image: string, format?: string): string[] {
  const info = JSON.parse(must('qemu-img', ['info', '-U', ...formatArgs(format), '--output=json', image], dir)) as { snapshots?: Array<{ name: string }> };
  return (info.snapshots ?? []).map((s) => s.name);
}

function rawOf(dir: string, image: string, out: string, format?: string): Buffer | undefined {
  must('qemu-img', ['convert', '-U', ...formatArgs(format), '-O', 'raw', image, out], dir);
  const path = resolve(dir, out);
  return statSync(path).size <= MAX_RAW_COMPARE ? readFileSync(path) : undefined;
}

/** A scenario made ready: its pristine directory, the state before and after a complete run. */
export interface PreparedScenario {
  scenario: KillScenario;
  dir: string;
  pristine: string;
  before: Map<string, Side>;
  after: Map<string, Side>;
  /** Snapshot contents by name, as qcow2 files (for qemu-img compare). */
  snapshotContents: Map<string, string>;
  /** File writes a complete run makes. */
  writes: number;
  /** Milliseconds from spawn to the first write, and to the end of a complete run. */
  firstWriteMs: number;
  fullMs: number;
}

/** An image as it is in `dir` (which keeps the rest of its chain, so qemu-img compare follows backing files). */
function sideOf(dir: string, image: string, rawOut: string, format?: string): Side | undefined {
  const path = join(dir, image);
  if (!isImage(dir, image, format)) return undefined;
  return { file: path, size: virtualSize(dir, image, format), raw: rawOf(dir, image, rawOut, format), snapshots: snapshotNames(dir, image, format) };
}

function runCommand(dir: string, scenario: KillScenario, env: Record<string, string>, killAfterMs?: number): Promise<{ killed: boolean; ms: number; status: number | null; stderr: string }> {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    // The child gets its own descriptor of the stdin fixture; ours is closed once it has been handed over.
    const stdin = scenario.stdin === undefined ? 'ignore' : openSync(join(dir, scenario.stdin), 'r');
    const child = spawn(process.execPath, [CLI_MAIN, ...scenario.args], { cwd: dir, env: { ...process.env, ...env }, stdio: [stdin, 'ignore', 'pipe'] });
    if (typeof stdin === 'number') closeSync(stdin);
    let stderr = '';
    child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString())); // stdio[2] is a pipe
    const timer = killAfterMs === undefined ? undefined : setTimeout(() => child.kill('SIGKILL'), killAfterMs);
    child.on('error', reject);
    child.on('exit', (status, signal) => {
      if (timer !== undefined) clearTimeout(timer);
      resolve({ killed: signal === 'SIGKILL', ms: Date.now() - started, status, stderr });
    });
  });
}

/** Makes the scenario's pristine copy, runs it once completely (counting writes), and records both sides. */
export async function prepareScenario(scenario: KillScenario, fixtureDir: string, workDir: string): Promise<PreparedScenario> {
  const dir = join(workDir, scenario.name.replace(/[^a-z0-9]+/gi, '-'));
  rmSync(dir, { recursive: true, force: true });
  const pristine = join(dir, 'pristine');
  copyInto(fixtureDir, pristine, scenario.fixtures);
  const sides = join(dir, 'sides');
  mkdirSync(sides, { recursive: true });
  const before = new Map<string, Side>();
  const snapshotContents = new Map<string, string>();
  for (const image of Object.keys(scenario.images)) {
    const side = sideOf(pristine, image, join(sides, `before-${image}.raw`), scenario.formats?.[image]);
    if (side !== undefined) before.set(image, side);
    for (const name of side?.snapshots ?? []) {
      const out = join(sides, `snapshot-${image}-${name}.qcow2`);
      must('qemu-img', ['convert', '-U', '-O', 'qcow2', '-l', `snapshot.name=${name}`, image, out], pristine);
      snapshotContents.set(name, out);
    }
  }
  const full = join(dir, 'full');
  copyInto(pristine, full, scenario.fixtures);
  const countFile = join(dir, 'writes.txt');
  const complete = await runCommand(full, scenario, { QCOWKIT_WRITE_COUNT_FILE: countFile });
  if (complete.status !== 0) throw new Error(`${scenario.name}: a complete run failed (${complete.status}): ${complete.stderr}`);
  const writes = Number(readFileSync(countFile, 'utf8'));
  const after = new Map<string, Side>();
  for (const image of Object.keys(scenario.images)) {
    const side = sideOf(full, image, join(sides, `after-${image}.raw`), scenario.formats?.[image]);
    if (side === undefined) throw new Error(`${scenario.name}: no ${image} after a complete run`);
    after.set(image, side);
    // A snapshot that exists only after the command (create) holds the disk as it was before.
    for (const name of side.snapshots) if (!snapshotContents.has(name) && before.has(image)) snapshotContents.set(name, before.get(image)!.file);
  }
  const first = join(dir, 'first');
  copyInto(pristine, first, scenario.fixtures);
  const firstRun = await runCommand(first, scenario, { QCOWKIT_CRASH_AT_WRITE: '1' });
  rmSync(first, { recursive: true, force: true });
  return { scenario, dir, pristine, before, after, snapshotContents, writes, firstWriteMs: firstRun.ms, fullMs: complete.ms };
}

/** The first sector (as a byte offset) of `actual` that matches neither `old` nor `next`, or -1. */
function sectorsOldOrNew(actual: Buffer, old: Buffer | undefined, next: Buffer): number {
  for (let at = 0; at < actual.length; at += SECTOR) {
    const sector = actual.subarray(at, at + SECTOR);
    if (old !== undefined && sector.equals(old.subarray(at, at + SECTOR))) continue;
    if (sector.equals(next.subarray(at, at + SECTOR))) continue;
    return at;
  }
  return -1;
}

function identical(dir: string, a: string, b: string, format?: string): boolean {
  return run('qemu-img', ['compare', '-U', '-q', ...formatArgs(format), ...(format === undefined ? [] : ['-F', format]), a, b], dir).status === 0;
}

/** Judges one image after a kill. Returns the outcome and a detail line. */
function judgeImage(prepared: PreparedScenario, dir: string, image: string, rule: DataRule): { outcome: Outcome; detail: string } {
  const format = prepared.scenario.formats?.[image];
  const f = formatArgs(format);
  if (!isImage(dir, image, format)) {
    if (rule === 'made') return { outcome: 'not-made', detail: `${image}: not a ${format ?? 'qcow2'} image yet` };
    return { outcome: 'unreadable', detail: `${image}: the ${format ?? 'qcow2'} header is gone` };
  }
  let check = run('qemu-img', ['check', '-U', ...f, '--output=json', image], dir);
  // 63: the format has no check (vpc); the reads below still judge it.
  if (check.status === 63 && format !== undefined) check = { status: 0, stdout: '{}', stderr: '' };
  if (check.status !== 0 && check.status !== 2 && check.status !== 3) {
    return { outcome: 'unreadable', detail: `${image}: qemu-img check exit ${check.status}: ${check.stderr.trim().split('\n')[0]}` };
  }
  const report = JSON.parse(check.stdout) as { corruptions?: number; leaks?: number; 'check-errors'?: number };
  if ((report.corruptions ?? 0) > 0 || (report['check-errors'] ?? 0) > 0) {
    const errors = check.stderr.split('\n').filter((l) => !l.startsWith('Leaked')).slice(0, 3).join(' | ');
    return { outcome: 'corrupt', detail: `${image}: ${report.corruptions ?? 0} corruptions, ${report['check-errors'] ?? 0} check errors: ${errors}` };
  }
  // Opens in both tools, and qcowkit reads what qemu-img reads.
  const rawName = `${image}.killed.raw`;
  const converted = run('qemu-img', ['convert', '-U', ...f, '-O', 'raw', image, rawName], dir);
  if (converted.status !== 0) return { outcome: 'unreadable', detail: `${image}: qemu-img convert: ${converted.stderr.trim()}` };
  const ours = run(process.execPath, [CLI_MAIN, 'compare', '-f', 'raw', '-F', format ?? 'qcow2', rawName, image], dir);
  if (ours.status === 1) return { outcome: 'wrong-data', detail: `${image}: qcowkit reads other data than qemu-img: ${ours.stdout.trim()}` };
  if (ours.status !== 0) return { outcome: 'unreadable', detail: `${image}: qcowkit: ${ours.stderr.trim()}` };

  const before = prepared.before.get(image);
  const after = prepared.after.get(image)!;
  const size = virtualSize(dir, image, format);
  const rawPath = join(dir, rawName);
  const raw = statSync(rawPath).size <= MAX_RAW_COMPARE ? readFileSync(rawPath) : undefined;
  const wrong = (why: string): { outcome: Outcome; detail: string } => ({ outcome: 'wrong-data', detail: `${image}: ${why}` });
  switch (rule) {
    case 'same':
      if (!identical(dir, before!.file, image, format)) return wrong('guest data changed');
      break;
    case 'whole':
      if (!identical(dir, before!.file, image, format) && !identical(dir, after.file, image, format)) return wrong('guest data is neither the old nor the new');
      break;
    case 'old-or-new':
    case 'made': {
      if (raw === undefined || after.raw === undefined) throw new Error(`${image}: too large for a sector comparison`);
      if (size !== after.size || (before !== undefined && size !== before.size)) return wrong(`size ${size}`);
      // A new image's "old" contents are zeros.
      const old = rule === 'made' ? Buffer.alloc(raw.length) : before!.raw;
      const at = sectorsOldOrNew(raw, old, after.raw);
      if (at >= 0) return wrong(`sector at ${at} is neither the old nor the new contents`);
      break;
    }
    case 'prefix': {
      if (size !== before!.size && size !== after.size) return wrong(`size ${size} is neither the old nor the new one`);
      if (raw === undefined || before!.raw === undefined) throw new Error(`${image}: too large for a prefix comparison`);
      const length = Math.min(before!.size, after.size);
      if (!raw.subarray(0, length).equals(before!.raw.subarray(0, length))) return wrong('data below the new size changed');
      break;
    }
  }
  if (prepared.scenario.snapshots) {
    const names = snapshotNames(dir, image, format);
    const same = (list: string[]): boolean => JSON.stringify(list) === JSON.stringify(names);
    if (!same(before!.snapshots) && !same(after.snapshots)) return wrong(`snapshot list [${names.join(', ')}] is neither the old nor the new one`);
    for (const name of names) {
      const out = `${image}.snapshot-${name}.qcow2`;
      const convertedSnapshot = run('qemu-img', ['convert', '-U', '-O', 'qcow2', '-l', `snapshot.name=${name}`, image, out], dir);
      if (convertedSnapshot.status !== 0) return { outcome: 'unreadable', detail: `${image}: snapshot ${name}: ${convertedSnapshot.stderr.trim()}` };
      if (!identical(dir, out, prepared.snapshotContents.get(name)!)) return wrong(`snapshot ${name} holds other data`);
    }
  }
  return (report.leaks ?? 0) > 0 ? { outcome: 'leaked', detail: `${image}: ${report.leaks} leaked clusters` } : { outcome: 'clean', detail: '' };
}

const SEVERITY: Outcome[] = ['clean', 'not-made', 'leaked', 'wrong-data', 'corrupt', 'unreadable'];

/** One kill: at write `atWrite` (1-based: the process stops just before that write), or after `afterMs`. */
export async function killOnce(prepared: PreparedScenario, how: { atWrite: number } | { afterMs: number }, slot = 'kill'): Promise<KillResult> {
  const dir = join(prepared.dir, slot);
  rmSync(dir, { recursive: true, force: true });
  copyInto(prepared.pristine, dir, prepared.scenario.fixtures);
  const result =
    'atWrite' in how
      ? await runCommand(dir, prepared.scenario, { QCOWKIT_CRASH_AT_WRITE: String(how.atWrite) })
      : await runCommand(dir, prepared.scenario, {}, how.afterMs);
  const label = 'atWrite' in how ? `at write ${how.atWrite} of ${prepared.writes}` : `after ${how.afterMs} ms`;
  if (!result.killed && result.status !== 0) {
    return { outcome: 'unreadable', killed: false, how: label, detail: `the command failed by itself (${result.status}): ${result.stderr.trim()}` };
  }
  let worst: { outcome: Outcome; detail: string } = { outcome: 'clean', detail: '' };
  for (const [image, rule] of Object.entries(prepared.scenario.images)) {
    const judged = judgeImage(prepared, dir, image, rule);
    if (SEVERITY.indexOf(judged.outcome) > SEVERITY.indexOf(worst.outcome)) worst = judged;
  }
  rmSync(dir, { recursive: true, force: true });
  return { ...worst, killed: result.killed, how: label };
}

/** Removes what prepareScenario made. */
export function discardScenario(prepared: PreparedScenario): void {
  rmSync(prepared.dir, { recursive: true, force: true });
}

/** Names of the files in a directory (for fixture sets). */
export function filesIn(dir: string): string[] {
  return readdirSync(dir);
}
