import type { Command } from 'commander';
import { registerCompare } from './compare.js';
import { registerConvert } from './convert.js';
import { registerInfo } from './info.js';
import { registerMap } from './map.js';
import { registerSnapshot } from './snapshot.js';

export function registerCommands(program: Command): void {
  registerInfo(program);
  registerMap(program);
  registerCompare(program);
  registerConvert(program);
  registerSnapshot(program);
}
