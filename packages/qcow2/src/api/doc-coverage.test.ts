import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('../../../..', import.meta.url));

interface Comment {
  summary?: Array<{ text: string }>;
  blockTags?: unknown[];
}
interface Reflection {
  id: number;
  name: string;
  /** A re-export of a name declared in another entry point: documented where it is declared. */
  target?: number;
  comment?: Comment;
  signatures?: Array<{ comment?: Comment }>;
  children?: Reflection[];
}

const hasText = (comment: Comment | undefined): boolean =>
  comment !== undefined && ((comment.summary ?? []).some((part) => part.text.trim() !== '') || (comment.blockTags ?? []).length > 0);
const byId = new Map<number, Reflection>();
const documented = (r: Reflection): boolean => {
  const declared = r.target === undefined ? r : byId.get(r.target);
  return declared !== undefined && (hasText(declared.comment) || (declared.signatures ?? []).some((s) => hasText(s.comment)));
};

/**
 * The API reference: typedoc (typedoc.json, warnings fail) builds it from the package's entry points, and its
 * JSON model tells which exported names carry documentation. Prints the measure per entry point.
 */
describe('the API reference', () => {
  it('builds without a warning, and documents at least 90% of the exported names of every entry point', () => {
    const dir = mkdtempSync(join(tmpdir(), 'qcowkit-web-typedoc-'));
    try {
      const json = join(dir, 'api.json');
      // --treatWarningsAsErrors comes from typedoc.json: a warning exits non-zero and fails here.
      execFileSync(process.execPath, [join(ROOT, 'node_modules/typedoc/bin/typedoc'), '--json', json, '--out', join(dir, 'html')], { cwd: ROOT, stdio: 'pipe' });
      const project = JSON.parse(readFileSync(json, 'utf8')) as Reflection;
      for (const entry of project.children ?? []) for (const name of entry.children ?? []) byId.set(name.id, name);
      let total = 0;
      let withDocs = 0;
      for (const entry of project.children ?? []) {
        const names = entry.children ?? [];
        const done = names.filter(documented).length;
        console.log(`${entry.name}: ${done}/${names.length} exported names documented`);
        expect(done / names.length, `${entry.name}: ${names.filter((n) => !documented(n)).map((n) => n.name).join(', ')}`).toBeGreaterThanOrEqual(0.9);
        total += names.length;
        withDocs += done;
      }
      console.log(`all entry points: ${withDocs}/${total} = ${((100 * withDocs) / total).toFixed(1)}%`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 180_000);
});
