import { execFile } from 'node:child_process';
import { mkdir, readFile, readdir, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { transform } from 'esbuild';

const run = promisify(execFile);

/** One runnable example: its code, where it came from, and the output lines its comments promise. */
export interface DocExample {
  source: string;
  code: string;
  /** `console.log(…); // expected` comments, in order. */
  expected: string[];
  /** Where it runs, from a Markdown marker `<!-- example browser -->`; absent: Node (or a shell). */
  place?: string;
}

/** The ```ts blocks of `@example` tags in a TypeScript source file. */
export function examplesInSource(text: string, source: string): DocExample[] {
  const out: DocExample[] = [];
  for (const match of text.matchAll(/@example([\s\S]*?)\*\//g)) {
    const body = match[1]!.split('\n').map((line) => line.replace(/^\s*\* ?/, '')).join('\n');
    const code = /```ts\n([\s\S]*?)```/.exec(body)?.[1];
    if (code !== undefined) out.push(example(code, source));
  }
  return out;
}

/** The code blocks of a Markdown file that follow a `<!-- example -->` (or `<!-- example PLACE -->`) marker. */
export function examplesInMarkdown(text: string, source: string): DocExample[] {
  return [...text.matchAll(/<!-- example(?: (\w+))? -->\s*```\w*\n([\s\S]*?)```/g)].map((m) => {
    const ex = example(m[2]!, source);
    if (m[1] !== undefined) ex.place = m[1];
    return ex;
  });
}

function example(code: string, source: string): DocExample {
  const expected = [...code.matchAll(/console\.log\(.*\);?\s*\/\/ (.*)$/gm)].map((m) => m[1]!.trim());
  return { source, code, expected };
}

/** Output comparison that ignores spacing and quotes, and lets "…" stand for "anything after this". */
export function outputMatches(actual: string, expected: string): boolean {
  const norm = (s: string): string => s.replace(/\s+/g, '').replace(/["']/g, '');
  const cut = expected.split(/\s*(?:\(|…)/)[0]!;
  const [a, e] = [norm(actual), norm(expected.includes('…') || expected.includes(' (') ? cut : expected)];
  return expected.includes('…') || expected.includes(' (') ? a.startsWith(e) : a === e;
}

/**
 * Runs each example as an ES module in `dir` (which the caller prepares: node_modules with the packages, any
 * files the examples open), after `rewrite` (say, a URL pointed at a local server) and esbuild strips the types and lowers `await using` for Node 20.
 * Returns each example's stdout lines.
 */
export async function runExamples(
  examples: DocExample[],
  dir: string,
  rewrite: (code: string) => string = (code) => code,
): Promise<Array<{ example: DocExample; lines: string[] }>> {
  const results = [];
  for (const [i, ex] of examples.entries()) {
    const { code } = await transform(rewrite(ex.code), { loader: 'ts', format: 'esm', target: 'node20' });
    const file = join(dir, `example-${i}.mjs`);
    await writeFile(file, code);
    const { stdout } = await run(process.execPath, [file], { cwd: dir, timeout: 60_000 });
    results.push({ example: ex, lines: stdout.split('\n').filter((l) => l !== '') });
  }
  return results;
}

/** Every `@example` in the .ts files under `dir` (tests excluded). */
export async function examplesUnder(dir: string): Promise<DocExample[]> {
  const out: DocExample[] = [];
  for (const entry of await readdir(dir, { recursive: true })) {
    if (!entry.endsWith('.ts') || entry.endsWith('.test.ts') || entry.startsWith('test-support')) continue;
    out.push(...examplesInSource(await readFile(join(dir, entry), 'utf8'), entry));
  }
  return out;
}

/** Links `packages` (name -> directory) into dir/node_modules, so examples import them by name. */
export async function linkPackages(dir: string, packages: Record<string, string>): Promise<void> {
  for (const [name, target] of Object.entries(packages)) {
    const link = join(dir, 'node_modules', name);
    await mkdir(join(link, '..'), { recursive: true });
    await symlink(target, link, 'dir');
  }
}
