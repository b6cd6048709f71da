import { readFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createRequire } from 'node:module';
import { resolve } from 'node:path';
import type { Command } from 'commander';
import { CommandError } from '../output/errors.js';

interface InspectFlags {
  port: string;
}

/**
 * qcowkit inspect [--port N]: serves the inspector page (@qcowkit/inspector) on localhost. The page reads the
 * images the user picks in the browser itself; this server only hands out the one static page.
 */
export function registerInspect(program: Command): void {
  program
    .command('inspect')
    .description('serve the web inspector on localhost (images are read in the browser, never uploaded)')
    .option('--port <n>', 'port to listen on (0: any free port)', '8417')
    .action(async (opts: InspectFlags) => {
      const port = Number(opts.port);
      if (!Number.isInteger(port) || port < 0 || port > 65535) throw new CommandError(`invalid port '${opts.port}'`);
      // Resolved from the running script (bin/qcowkit.js or dist/main.js): works in the CommonJS bundle too.
      const page = await readFile(createRequire(resolve(process.argv[1] ?? 'qcowkit')).resolve('@qcowkit/inspector/index.html'));
      const server = createServer((request, response) => {
        const path = new URL(request.url ?? '/', 'http://localhost').pathname;
        if (request.method !== 'GET' && request.method !== 'HEAD') response.writeHead(405).end();
        else if (path !== '/' && path !== '/index.html') response.writeHead(404).end();
        else response.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8', 'Content-Length': page.length }).end(request.method === 'HEAD' ? undefined : page);
      });
      await new Promise<void>((resolve, reject) => {
        server.once('error', (error: NodeJS.ErrnoException) => reject(new CommandError(`cannot listen on port ${port}: ${error.code ?? error.message}`)));
        server.listen(port, '127.0.0.1', resolve);
      });
      process.stdout.write(`qcowkit inspector: http://127.0.0.1:${(server.address() as AddressInfo).port}/ (Ctrl-C to stop)\n`);
      await new Promise<void>((resolve) => {
        process.once('SIGINT', () => server.close(() => resolve()));
        process.once('SIGTERM', () => server.close(() => resolve()));
      });
    });
}
