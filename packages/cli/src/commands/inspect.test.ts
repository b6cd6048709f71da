import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const LAUNCHER = fileURLToPath(new URL('../../bin/qcowkit.js', import.meta.url));
const PAGE = fileURLToPath(new URL('../../../inspector/dist/index.html', import.meta.url));

describe('qcowkit inspect', () => {
  it('serves the inspector page on localhost until stopped', async () => {
    const child = spawn(process.execPath, [LAUNCHER, 'inspect', '--port', '0'], { stdio: ['ignore', 'pipe', 'pipe'] });
    try {
      const line = await new Promise<string>((resolve, reject) => {
        let out = '';
        child.stdout.on('data', (chunk: Buffer) => {
          out += chunk.toString();
          if (out.includes('\n')) resolve(out);
        });
        child.once('exit', (code) => reject(new Error(`exited ${code} before listening`)));
      });
      const url = /qcowkit inspector: (http:\/\/127\.0\.0\.1:\d+\/)/.exec(line)?.[1];
      expect(url).toBeDefined();
      const page = await fetch(url!);
      expect(page.status).toBe(200);
      expect(page.headers.get('content-type')).toBe('text/html; charset=utf-8');
      expect(Buffer.from(await page.arrayBuffer()).equals(readFileSync(PAGE))).toBe(true);
      expect((await fetch(`${url}etc/passwd`)).status).toBe(404);
    } finally {
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGTERM');
      expect(await exited).toBe(0);
    }
  });
});
