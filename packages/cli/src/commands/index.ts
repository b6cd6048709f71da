import type { Command } from 'commander';
import { registerChain } from './chain.js';
import { registerCommit } from './commit.js';
import { registerCheck } from './check.js';
import { registerCompare } from './compare.js';
import { registerConvert } from './convert.js';
import { registerCreate } from './create.js';
import { registerDd } from './dd.js';
import { registerDemo } from './demo.js';
import { registerInfo } from './info.js';
import { registerIo } from './io.js';
import { registerMap } from './map.js';
import { registerMeasure } from './measure.js';
import { registerRebase } from './rebase.js';
import { registerResize } from './resize.js';
import { registerSnapshot } from './snapshot.js';
import { registerVm } from './vm.js';

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
  registerCommit(program);
  registerRebase(program);
  registerChain(program);
  registerDemo(program);
  registerCheck(program);
  registerDd(program);
  registerVm(program);
}
