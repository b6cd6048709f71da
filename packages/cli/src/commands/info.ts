import type { Command } from 'commander';

// Placeholder until the info command lands (being written in parallel).
export function registerInfo(_program: Command): void {}
