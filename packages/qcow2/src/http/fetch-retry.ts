import { Qcow2Error } from '../errors.js';

/** How requests are made and retried. */
export interface FetchPolicy {
  /** The fetch to use (default: the global one). */
  fetch: (input: string, init: RequestInit) => Promise<Response>;
  /** One attempt's limit, headers and body included (default 30 s). */
  timeoutMs: number;
  /** Further attempts after a transient failure (default 3). */
  retries: number;
  /** First backoff delay; each retry doubles it, capped at 5 s (default 250 ms). */
  retryDelayMs: number;
  /** Extra request headers (authorization…). */
  headers: Record<string, string>;
}

const MAX_DELAY_MS = 5_000;

/** Statuses worth another try: the server or a proxy may answer the same request later. */
function transientStatus(status: number): boolean {
  return status === 408 || status === 429 || status === 500 || status === 502 || status === 503 || status === 504;
}

class Transient extends Error {}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * GETs `range` of `url` and hands the response to `accept` (which reads the body), with a timeout per
 * attempt and bounded retries on network errors, timeouts and transient statuses. Other statuses fail at once
 * with IO_ERROR (a 404 names the file as missing, so a missing backing file says so).
 */
export async function fetchWithRetries<T>(url: string, range: string, policy: FetchPolicy, accept: (response: Response) => Promise<T>): Promise<T> {
  let lastError: unknown;
  for (let attempt = 0; attempt <= policy.retries; attempt++) {
    if (attempt > 0) await sleep(Math.min(MAX_DELAY_MS, policy.retryDelayMs * 2 ** (attempt - 1)));
    const controller = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      controller.abort();
    }, policy.timeoutMs);
    try {
      const response = await policy.fetch(url, { headers: { ...policy.headers, Range: range }, signal: controller.signal });
      if (transientStatus(response.status)) {
        await response.body?.cancel();
        throw new Transient(`HTTP ${response.status} ${response.statusText}`.trim());
      }
      if (response.status === 404) {
        await response.body?.cancel();
        throw new Qcow2Error('IO_ERROR', 'No such file or directory (HTTP 404)', { file: url, missing: true });
      }
      if (response.status !== 200 && response.status !== 206 && response.status !== 416) {
        await response.body?.cancel();
        throw new Qcow2Error('IO_ERROR', `HTTP ${response.status} ${response.statusText}`.trim(), { file: url });
      }
      return await accept(response);
    } catch (error) {
      if (error instanceof Qcow2Error) throw error;
      lastError = timedOut ? new Transient(`no answer within ${policy.timeoutMs} ms`) : error;
    } finally {
      clearTimeout(timer);
    }
  }
  const message = (lastError as Error).message;
  const tries = `${policy.retries + 1} attempt${policy.retries === 0 ? '' : 's'}`;
  if (/^no answer within/.test(message)) throw new Qcow2Error('TIMEOUT', `${message} (${tries})`, { file: url, cause: lastError });
  throw new Qcow2Error('IO_ERROR', `${message} (${tries})`, { file: url, cause: lastError });
}
