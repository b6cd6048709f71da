import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import * as engine from '../packages/qcow2/src/entries/engine.js';
import { fuzzTargets, isExpected } from './targets.js';

/**
 * Every input the fuzzer ever found a problem with (fuzz/regressions/, one small file each, named by target and
 * hash), replayed through every fuzz target on the plain engine: each run ends, and ends either normally or
 * with a Qcow2Error — never another error, never a promise that does not settle.
 */
const dir = new URL('./regressions/', import.meta.url).pathname;
const inputs = readdirSync(dir).filter((name) => !name.endsWith('.txt') && !name.startsWith('.'));
const targets = fuzzTargets(engine);

describe('fuzz regressions', () => {
  it('the regression set is not empty', () => expect(inputs.length).toBeGreaterThan(0));
  for (const name of inputs) {
    it(name, async () => {
      const input = new Uint8Array(readFileSync(join(dir, name)));
      for (const [target, run] of Object.entries(targets)) {
        let timer: ReturnType<typeof setTimeout> | undefined;
        const outcome = await Promise.race([
          run(input).then(
            () => 'ok',
            (error: unknown) => (isExpected(engine, error) ? 'Qcow2Error' : `${target}: ${error instanceof Error ? error.stack : String(error)}`),
          ),
          new Promise<string>((resolve) => (timer = setTimeout(() => resolve(`${target}: did not settle within 20 s`), 20_000))),
        ]);
        clearTimeout(timer);
        expect(['ok', 'Qcow2Error'], outcome).toContain(outcome);
      }
    }, 120_000);
  }
});
