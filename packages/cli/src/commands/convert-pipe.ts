import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { RawDevice, convertToQcow2Stream, convertToRawStream, isZero, type BlockDevice, type ByteSink, type ClusterCompressor, type RateLimiter } from '@qcowkit/qcow2/engine';
import { FileStorage } from '@qcowkit/qcow2/node';
import { CommandError } from '../output/errors.js';
import type { ImageOptions } from '../output/image-options.js';

/** The name that means standard input (as a source) or standard output (as the output), as in most tools. */
export const PIPE = '-';

/** Scratch files live under TMPDIR and are unlinked as soon as they are open: nothing is left behind, even after a kill. */
async function scratchFile(label: string): Promise<FileStorage> {
  const dir = await mkdtemp(join(tmpdir(), 'qcowkit-'));
  try {
    return await FileStorage.open(join(dir, label), { create: true });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * Standard output as a sink: each write resolves once Node has handed the bytes on, so buffers can be reused;
 * with -r, no faster than the rate.
 */
function stdoutSink(rateLimiter: RateLimiter | undefined): ByteSink {
  return {
    write: async (bytes) => {
      await rateLimiter?.take(bytes.length);
      await new Promise<void>((resolve, reject) => {
        process.stdout.write(bytes, (error) => (error ? reject(error) : resolve()));
      });
    },
  };
}

/** What convert refuses when the output is standard output (a pipe cannot be created, reopened or seeked). */
export function checkPipeOutput(flags: { noCreate?: boolean; backingFile?: string; outputFormat?: string }, options: ImageOptions | undefined): void {
  if (flags.noCreate) throw new CommandError('-n cannot be used when the output is standard output (-)');
  if (flags.backingFile !== undefined || options?.qcow2.backingFile !== undefined) throw new CommandError('a backing file cannot be used when the output is standard output (-)');
  if (options?.qcow2.dataFile !== undefined) throw new CommandError('an external data file cannot be used when the output is standard output (-)');
  if (options !== undefined && options.preallocation !== 'off') throw new CommandError('preallocation cannot be used when the output is standard output (-)');
}

/**
 * convert … - : the image goes to standard output in one forward pass. qcow2 output plans its layout from the
 * source first (see convertToQcow2Stream); the allocation log, and with -c the compressed data, are spooled to
 * scratch files under TMPDIR.
 */
export async function convertToStdout(
  source: BlockDevice,
  format: 'raw' | 'qcow2',
  options: ImageOptions,
  settings: { sparseSize: number; compress?: ClusterCompressor; rateLimiter?: RateLimiter },
  onProgress: (done: number, total: number) => void,
): Promise<void> {
  const sink = stdoutSink(settings.rateLimiter);
  if (format === 'raw') {
    await convertToRawStream(source, sink, onProgress);
    return;
  }
  const log = await scratchFile('allocation-log');
  const data = await scratchFile('compressed-data');
  try {
    await convertToQcow2Stream(source, sink, {
      image: options.qcow2,
      scratch: { log, data },
      sparseSize: settings.sparseSize,
      ...(settings.compress === undefined ? {} : { compress: settings.compress }),
      onProgress,
    });
  } finally {
    await log.close();
    await data.close();
  }
}

const SPOOL_BLOCK = 4096;
const SPOOL_BUFFER = 1024 * 1024;

/**
 * convert -f raw - … : standard input read to its end into a sparse scratch file (blocks of zeros become holes),
 * then converted like any raw file. The disk's virtual size is the number of bytes read, rounded up to a
 * 512-byte sector as for a raw file; nothing else could say what a pipe holds before it ends. Reading it whole
 * first also lets every output (a seekable file, qcow2, compressed, or another pipe) be made as usual.
 */
export async function spoolStandardInput(format: string | undefined): Promise<BlockDevice> {
  if (format !== 'raw') throw new CommandError('reading the source from standard input (-) needs -f raw: the format of a pipe is not probed', 1, PIPE);
  const storage = await scratchFile('stdin.raw');
  try {
    const staged = new Uint8Array(SPOOL_BUFFER);
    let fill = 0;
    let position = 0;
    const flush = async (): Promise<void> => {
      // Only runs of blocks that are not all zeros are written: the rest stay holes, so extents skip them later.
      let run = -1;
      for (let at = 0; at < fill; at += SPOOL_BLOCK) {
        const zero = isZero(staged.subarray(at, Math.min(fill, at + SPOOL_BLOCK)));
        if (!zero && run < 0) run = at;
        if (zero && run >= 0) {
          await storage.write(staged.subarray(run, at), position + run);
          run = -1;
        }
      }
      if (run >= 0) await storage.write(staged.subarray(run, fill), position + run);
      position += fill;
      fill = 0;
    };
    for await (const chunk of process.stdin as AsyncIterable<Buffer>) {
      let used = 0;
      while (used < chunk.length) {
        const n = Math.min(chunk.length - used, staged.length - fill);
        staged.set(chunk.subarray(used, used + n), fill);
        fill += n;
        used += n;
        if (fill === staged.length) await flush();
      }
    }
    await flush();
    await storage.truncate(position);
    return await RawDevice.open(storage, PIPE);
  } catch (error) {
    await storage.close();
    throw error;
  }
}
