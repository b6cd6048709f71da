/**
 * Collects output lines and writes them to stdout in large pieces: a map of a fragmented image has tens of
 * thousands of lines, and one write per line cost more than computing them.
 */
export class BufferedOutput {
  private parts: string[] = [];
  private size = 0;

  constructor(
    private readonly limit = 256 * 1024,
    private readonly stream: NodeJS.WritableStream = process.stdout,
  ) {}

  write(text: string): void {
    this.parts.push(text);
    this.size += text.length;
    if (this.size >= this.limit) this.flush();
  }

  flush(): void {
    if (this.parts.length === 0) return;
    this.stream.write(this.parts.join(''));
    this.parts = [];
    this.size = 0;
  }
}
