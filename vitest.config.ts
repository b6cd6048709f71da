import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['packages/*/src/**/*.test.ts', 'fixtures/**/*.test.ts', 'bench/**/*.test.ts', 'fuzz/**/*.test.ts', 'scripts/**/*.test.ts'],
    globalSetup: ['./fixtures/global-setup.ts'],
    testTimeout: 60_000,
    hookTimeout: 600_000,
    pool: 'forks',
  },
});
