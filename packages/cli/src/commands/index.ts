import type { Command } from 'commander';
import { registerCompare } from './compare.js';
import { registerConvert } from './convert.js';
import { registerCreate } from './create.js';
import { registerDemo } from './demo.js';
import { registerInfo } from './info.js';
import { registerIo } from './io.js';
import { registerMap } from './map.js';
import { registerMeasure } from './measure.js';
import { registerResize } from './resize.js';
import { registerSnapshot } from './snapshot.js';

export function registerCommands(program: Command): void {
  registerCreate(program);
  registerInfo(program);
  registerMap(program);
  registerCompare(program);
  registerConvert(program);
  registerResize(program);
  registerSnapshot(program);
  registerIo(program);
  registerMeasure(program);
  registerDemo(program);
}
