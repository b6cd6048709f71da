/**
 * The fake-hypervisor guest of the flow and recovery tests: a domain 'guest' with a qcow2 disk over a qcow2
 * backing file (vda) and a raw disk (vdb), on real image files in a temporary directory, with its intent logs
 * in a directory of their own; and the checks those tests share.
 */
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, expect } from 'vitest';
import { snapshotDomain, type SnapshotOptions } from '../snapshot.js';
import { FakeHypervisor } from './fake-hypervisor.js';
import { checkImage, compareImages, expectedContent, imageInfo, makeChain, MiB, verifyRegions, visibleRegions, type Region } from './images.js';

export const SIZE = 16 * MiB;
export const BASE: Region[] = [
  { offset: 0, length: 2 * MiB, pattern: 0x11 },
  { offset: 8 * MiB, length: 1 * MiB, pattern: 0x12 },
];
export const TOP: Region[] = [
  { offset: 1 * MiB, length: 2 * MiB, pattern: 0x21 },
  { offset: 12 * MiB, length: 64 * 1024, pattern: 0x22 },
];
/** A write the guest makes while the snapshot runs: on the disk afterwards, not in the output. */
export const DURING: Region = { offset: 4 * MiB, length: 64 * 1024, pattern: 0x5a };

export interface Setup {
  dir: string;
  /** The intent logs' directory: empty whenever the guest is back as it was. */
  stateDir: string;
  fake: FakeHypervisor;
  output: string;
  expected: string;
  files: string[];
  before: ReturnType<FakeHypervisor['observe']>;
}

const dirs: string[] = [];
/** Registers the removal of every setup's directories after each test (call at the top of a test file). */
export function cleanUpSetups(): void {
  afterEach(() => {
    for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
  });
}

export function setup(state: 'running' | 'paused' | 'shutoff', options: { agent?: boolean; persistent?: boolean; virtType?: string } = {}): Setup {
  const dir = mkdtempSync(join(tmpdir(), 'qcowkit-vm-flows-'));
  const stateDir = mkdtempSync(join(tmpdir(), 'qcowkit-vm-flows-state-'));
  dirs.push(dir, stateDir);
  const base = join(dir, 'base.qcow2');
  const top = join(dir, 'top.qcow2');
  makeChain(base, top, SIZE, BASE, TOP);
  const data = join(dir, 'data.raw');
  writeFileSync(data, Buffer.alloc(MiB, 0x77));
  const expected = join(dir, 'expected.raw');
  writeFileSync(expected, expectedContent(SIZE, [...BASE, ...TOP]));
  const fake = new FakeHypervisor();
  fake.addDomain({
    name: 'guest',
    state,
    ...options,
    disks: [
      {
        target: 'vda',
        chain: [
          { type: 'file', path: top, format: 'qcow2' },
          { type: 'file', path: base, format: 'qcow2' },
        ],
      },
      { target: 'vdb', chain: [{ type: 'file', path: data, format: 'raw' }] },
    ],
  });
  return { dir, stateDir, fake, output: join(dir, 'out.qcow2'), expected, files: readdirSync(dir).sort(), before: fake.observe('guest') };
}

export function snapshot(s: Setup, options: Partial<SnapshotOptions> = {}): ReturnType<typeof snapshotDomain> {
  return snapshotDomain(s.fake, { domain: 'guest', output: s.output, stateDir: s.stateDir, ...options });
}

/** The guest as it was, no job, no temporary file, no output, and its disk unchanged. */
export function expectRestored(s: Setup, extraWrites: Region[] = []): void {
  expect(s.fake.observe('guest')).toEqual(s.before);
  expect(readdirSync(s.dir).sort()).toEqual(s.files);
  expect(readdirSync(s.stateDir)).toEqual([]);
  const top = s.before.chains[0]![0]!;
  if (extraWrites.length === 0) expect(compareImages(s.expected, top, ['raw', 'qcow2']).identical).toBe(true);
  verifyRegions(top, visibleRegions(SIZE, [...BASE, ...TOP, ...extraWrites]));
}

/** The output holds the disk at the snapshot's point in time, standalone, and passes qemu-img check. */
export function expectGoodOutput(s: Setup, format: 'qcow2' | 'raw' = 'qcow2'): void {
  const result = compareImages(s.expected, s.output, ['raw', format]);
  expect(result.identical, result.output).toBe(true);
  if (format === 'qcow2') {
    checkImage(s.output);
    expect(imageInfo(s.output)['backing-filename']).toBeUndefined();
  }
}

