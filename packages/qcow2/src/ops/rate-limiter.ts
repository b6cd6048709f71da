/**
 * qemu-img convert -r: a limit on the bytes written per second. A token bucket that holds one second's worth:
 * a short burst goes at full speed (as qemu's throttling lets a burst through), a long copy averages the rate.
 * `sleep` is injectable so tests run on a fake clock.
 */
export class RateLimiter {
  private tokens: number;
  private last: number;

  constructor(
    readonly bytesPerSecond: number,
    private readonly now: () => number = () => performance.now(),
    private readonly sleep: (ms: number) => Promise<void> = (ms) => new Promise((resolve) => setTimeout(resolve, ms)),
  ) {
    if (!(bytesPerSecond > 0)) throw new RangeError('rate limit must be positive');
    this.tokens = bytesPerSecond;
    this.last = now();
  }

  /** Waits until `bytes` more may be written. */
  async take(bytes: number): Promise<void> {
    this.refill();
    this.tokens -= bytes;
    if (this.tokens >= 0) return;
    await this.sleep((-this.tokens / this.bytesPerSecond) * 1000);
    this.refill();
  }

  private refill(): void {
    const now = this.now();
    this.tokens = Math.min(this.bytesPerSecond, this.tokens + ((now - this.last) / 1000) * this.bytesPerSecond);
    this.last = now;
  }
}
