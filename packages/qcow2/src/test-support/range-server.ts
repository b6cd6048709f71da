import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join, normalize } from 'node:path';

export interface RangeServerOptions {
  /** Serve Range requests with 206 (default true); false answers every GET with 200 and the whole file. */
  ranges?: boolean;
  /** Answer this many requests with 503 before serving (retry tests). */
  failFirst?: number;
  /** Hold every answer this long (timeout tests). */
  delayMs?: number;
}

/** A static file server on 127.0.0.1 for the HTTP tests, counting what it sends. */
export interface RangeServer {
  /** "http://127.0.0.1:PORT/" */
  url: string;
  /** Body bytes sent so far, and requests answered. */
  bytesSent: number;
  requests: number;
  /** The Range headers received, in order. */
  ranges: string[];
  reset(): void;
  close(): Promise<void>;
}

const TYPES: Record<string, string> = { html: 'text/html; charset=utf-8', js: 'text/javascript', wasm: 'application/wasm' };

/** Pages and scripts as such (the README's browser example is served from here); anything else as bytes. */
function contentType(path: string): string {
  return TYPES[path.slice(path.lastIndexOf('.') + 1)] ?? 'application/octet-stream';
}

/** Serves the files under `root` with byte ranges, as a plain static web server (nginx, S3) does. */
export async function startRangeServer(root: string, options: RangeServerOptions = {}): Promise<RangeServer> {
  let failuresLeft = options.failFirst ?? 0;
  const state: RangeServer = {
    url: '',
    bytesSent: 0,
    requests: 0,
    ranges: [],
    reset() {
      state.bytesSent = 0;
      state.requests = 0;
      state.ranges = [];
    },
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
  const server: Server = createServer(async (request, response) => {
    // Pages on other origins (the inspector from file://) may read the images, Range header and all.
    response.setHeader('Access-Control-Allow-Origin', '*');
    response.setHeader('Access-Control-Expose-Headers', 'Content-Range, Content-Length, Accept-Ranges');
    if (request.method === 'OPTIONS') {
      response.writeHead(204, { 'Access-Control-Allow-Headers': 'Range', 'Access-Control-Allow-Methods': 'GET, HEAD' }).end();
      return;
    }
    state.requests++;
    if (options.delayMs !== undefined) await new Promise((resolve) => setTimeout(resolve, options.delayMs));
    if (failuresLeft > 0) {
      failuresLeft--;
      response.writeHead(503).end();
      return;
    }
    const path = normalize(join(root, decodeURIComponent(new URL(request.url ?? '/', 'http://x').pathname)));
    let size: number;
    try {
      const info = await stat(path);
      if (!path.startsWith(root) || !info.isFile()) throw new Error('not a file');
      size = info.size;
    } catch {
      response.writeHead(404).end();
      return;
    }
    const range = request.headers.range;
    const match = range === undefined ? null : /^bytes=(\d+)-(\d*)$/.exec(range);
    if (range !== undefined) state.ranges.push(range);
    if (options.ranges === false || match === null) {
      const accept = options.ranges === false ? {} : { 'Accept-Ranges': 'bytes' };
      response.writeHead(200, { 'Content-Length': size, 'Content-Type': contentType(path), ...accept });
      send(path, 0, size - 1);
      return;
    }
    const start = Number(match[1]);
    const end = Math.min(match[2] === '' ? size - 1 : Number(match[2]), size - 1);
    if (start >= size) {
      response.writeHead(416, { 'Content-Range': `bytes */${size}` }).end();
      return;
    }
    response.writeHead(206, { 'Content-Length': end - start + 1, 'Content-Range': `bytes ${start}-${end}/${size}`, 'Accept-Ranges': 'bytes' });
    send(path, start, end);

    function send(file: string, from: number, to: number): void {
      if (request.method === 'HEAD' || to < from) {
        response.end();
        return;
      }
      const stream = createReadStream(file, { start: from, end: to });
      stream.on('data', (chunk) => {
        state.bytesSent += chunk.length;
      });
      stream.pipe(response);
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  state.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
  return state;
}
