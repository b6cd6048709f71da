/**
 * A real qemu-io holding an image open the way a running guest does: started without -c, it opens the image,
 * takes qemu's locks and waits at its prompt for commands on stdin (a pipe here) until told to quit. Used by
 * the lock tests of the engine, the CLI and the snapshot package, against the real thing.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { readFileSync, statSync } from 'node:fs';
import { qemuIoBinary } from '../../../../fixtures/corpus.js';

export class QemuIoHolder {
  private exited: Promise<number>;

  private constructor(
    readonly image: string,
    private readonly child: ChildProcessWithoutNullStreams,
    private output: { text: string },
  ) {
    this.exited = new Promise((resolve) => child.on('close', (code) => resolve(code ?? -1)));
  }

  /**
   * Starts `qemu-io ARGS IMAGE` (e.g. ['-r'] for read-only, ['-f', 'raw']) and resolves once it waits at its
   * prompt with the image open; rejects with qemu-io's own message when it could not open the image.
   */
  static async start(image: string, args: string[] = []): Promise<QemuIoHolder> {
    const child = spawn(qemuIoBinary(), [...args, image], { stdio: ['pipe', 'pipe', 'pipe'] });
    const output = { text: '' };
    const holder = new QemuIoHolder(image, child, output);
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`qemu-io ${image}: no prompt after 30 s: ${output.text}`)), 30_000);
      const onData = (chunk: Buffer): void => {
        output.text += chunk.toString();
        if (output.text.includes('qemu-io> ')) {
          clearTimeout(timer);
          resolve();
        }
      };
      child.stdout.on('data', onData);
      child.stderr.on('data', onData);
      child.on('close', (code) => {
        clearTimeout(timer);
        reject(new Error(`qemu-io ${args.join(' ')} ${image} exited ${code}: ${output.text.trim()}`));
      });
    });
    return holder;
  }

  /** Runs one qemu-io command at the prompt and resolves with what it printed up to the next prompt. */
  async command(line: string): Promise<string> {
    const start = this.output.text.length;
    this.child.stdin.write(`${line}\n`);
    for (let i = 0; i < 3000; i++) {
      const answer = this.output.text.slice(start);
      if (answer.includes('qemu-io> ')) return answer.replace(/qemu-io> $/, '');
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    throw new Error(`qemu-io: no answer to '${line}'`);
  }

  /** Quits qemu-io (it closes the image and drops its locks) and waits for it to exit. */
  async release(): Promise<void> {
    if (this.child.exitCode === null) this.child.stdin.end('quit\n');
    await this.exited;
  }
}

/** The lock bytes held on `file` by anyone, from /proc/locks: OFD locks only, sorted, ranges expanded. */
export function heldLockBytes(file: string): number[] {
  const { dev, ino } = statSync(file);
  // /proc/locks names the device as MAJOR:MINOR in hex (as the kernel's %02x:%02x), the inode in decimal.
  const major = Math.floor(dev / 256) & 0xfff;
  const minor = (dev & 0xff) | ((dev >> 12) & 0xfff00);
  const id = `${major.toString(16).padStart(2, '0')}:${minor.toString(16).padStart(2, '0')}:${ino}`;
  const bytes = new Set<number>();
  for (const line of readFileSync('/proc/locks', 'utf8').split('\n')) {
    const fields = line.trim().split(/\s+/);
    // "1: OFDLCK ADVISORY  READ -1 fe:00:2146499 203 203" (a blocked waiter has "->" after the number)
    const at = fields.indexOf(id);
    if (at < 0 || !fields.includes('OFDLCK')) continue;
    const first = Number(fields[at + 1]);
    const last = fields[at + 2] === 'EOF' ? first : Number(fields[at + 2]);
    for (let b = first; b <= last; b++) bytes.add(b);
  }
  return [...bytes].sort((a, b) => a - b);
}
