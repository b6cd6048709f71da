import { describe, expect, it } from 'vitest';
import { RateLimiter } from './rate-limiter.js';

/** A fake clock: sleeping advances it, so the limiter's arithmetic is tested without real time. */
function fakeClock(): { now: () => number; sleep: (ms: number) => Promise<void>; slept: number[] } {
  let t = 0;
  const slept: number[] = [];
  return {
    now: () => t,
    sleep: async (ms) => {
      slept.push(ms);
      t += ms;
    },
    slept,
  };
}

describe('RateLimiter (convert -r)', () => {
  it('lets one second of data through at once, then averages the rate', async () => {
    const clock = fakeClock();
    const limiter = new RateLimiter(1000, clock.now, clock.sleep);
    await limiter.take(1000);
    expect(clock.slept).toEqual([]);
    await limiter.take(500);
    expect(clock.slept).toEqual([500]);
    for (let i = 0; i < 10; i++) await limiter.take(1000);
    // 11.5 kB at 1 kB/s with a 1 kB burst: 10.5 s of waiting in all.
    expect(clock.now()).toBeCloseTo(10_500);
  });

  it('time spent elsewhere counts (a slow reader is not slowed further), up to one second of credit', async () => {
    const clock = fakeClock();
    const limiter = new RateLimiter(1000, clock.now, clock.sleep);
    await limiter.take(1000);
    await clock.sleep(5000);
    clock.slept.length = 0;
    await limiter.take(1000);
    expect(clock.slept).toEqual([]);
    await limiter.take(1000);
    expect(clock.slept).toEqual([1000]);
  });

  it('refuses a rate that is not positive', () => {
    expect(() => new RateLimiter(0)).toThrow(RangeError);
  });
});
