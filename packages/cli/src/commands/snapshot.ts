import type { Command } from 'commander';

// Placeholder until the snapshot command lands (being written in parallel).
export function registerSnapshot(_program: Command): void {}
