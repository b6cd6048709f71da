import { CommandError } from './errors.js';

export type OutputFormat = 'human' | 'json';

export function parseOutputFormat(value: string): OutputFormat {
  if (value === 'human' || value === 'json') return value;
  throw new CommandError(`--output must be used with human or json as argument.`);
}
