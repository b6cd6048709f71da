import { createHash } from 'node:crypto';
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hasQemuImg, qemuImg, requireQemuImg } from '../../../../fixtures/corpus.js';
import { parseSnapshotAction } from './snapshot.js';
import { CLI_MAIN, qcowkit, type Run } from '../test-support/run-cli.js';

requireQemuImg();



function qemu(args: string[], cwd: string, env: NodeJS.ProcessEnv = process.env): Run {
  const r = qemuImg(args, { cwd, env });
  return { stdout: r.stdout, stderr: r.stderr, status: r.status };
}

describe('snapshot action parsing', () => {
  const none = { list: 0, create: [], apply: [], delete: [] };
  it('picks the one action asked for', () => {
    expect(parseSnapshotAction(none)).toEqual({ kind: 'none' });
    expect(parseSnapshotAction({ ...none, list: 1 })).toEqual({ kind: 'list' });
    expect(parseSnapshotAction({ ...none, create: ['a'] })).toEqual({ kind: 'create', name: 'a' });
    expect(parseSnapshotAction({ ...none, apply: ['b'] })).toEqual({ kind: 'apply', name: 'b' });
    expect(parseSnapshotAction({ ...none, delete: ['c'] })).toEqual({ kind: 'delete', name: 'c' });
  });
  it("refuses to mix actions, or to repeat one, with qemu's message", () => {
    for (const flags of [
      { ...none, list: 2 },
      { ...none, list: 1, create: ['a'] },
      { ...none, create: ['a', 'b'] },
      { ...none, apply: ['a'], delete: ['b'] },
    ]) {
      expect(() => parseSnapshotAction(flags)).toThrow("Cannot mix '-l', '-a', '-c', '-d'");
    }
  });
});

describe.runIf(hasQemuImg())('qcowkit snapshot -l equals qemu-img snapshot -l', { timeout: 180_000 }, () => {
  const work = mkdtempSync(join(tmpdir(), 'qcowkit-snapshot-cli-'));
  afterAll(() => rmSync(work, { recursive: true, force: true }));
  beforeAll(() => {
    expect(existsSync(CLI_MAIN), `${CLI_MAIN} is missing: build first (npx tsc -b packages/qcow2 packages/cli, or npm test)`).toBe(true);
  });

  const img = (args: string[]): void => {
    const r = qemuImg(args, { cwd: work });
    expect(r.status, `qemu-img ${args.join(' ')}: ${r.stderr}`).toBe(0);
  };

  function expectSameList(file: string, env?: NodeJS.ProcessEnv, extra: string[] = []): Run {
    const theirs = qemu(['snapshot', '-l', ...extra, file], work, env);
    const ours = qcowkit(['snapshot', '-l', ...extra, file], work, env);
    expect(ours.stdout, ours.stderr).toBe(theirs.stdout);
    expect(ours.status).toBe(theirs.status);
    return ours;
  }

  /** Rewrites snapshot fields in place: VM state size (both fields), VM clock, icount (-1n = not recorded). */
  function patchSnapshots(file: string, patches: Array<{ vmStateSize?: bigint; vmClockNsec?: bigint; icount?: bigint }>): void {
    const fd = openSync(join(work, file), 'r+');
    try {
      const header = Buffer.alloc(72);
      readSync(fd, header, 0, 72, 0);
      const offset = Number(header.readBigUInt64BE(64));
      const table = Buffer.alloc(1 << 20);
      readSync(fd, table, 0, table.length, offset);
      let p = 0;
      for (const patch of patches) {
        const extra = table.readUInt32BE(p + 36);
        if (patch.vmClockNsec !== undefined) table.writeBigUInt64BE(patch.vmClockNsec, p + 24);
        if (patch.vmStateSize !== undefined) {
          table.writeUInt32BE(patch.vmStateSize >= 2n ** 32n ? 0 : Number(patch.vmStateSize), p + 32);
          if (extra >= 8) table.writeBigUInt64BE(patch.vmStateSize, p + 40);
        }
        if (patch.icount !== undefined && extra >= 24) table.writeBigUInt64BE(BigInt.asUintN(64, patch.icount), p + 56);
        p += (40 + extra + table.readUInt16BE(p + 12) + table.readUInt16BE(p + 14) + 7) & ~7;
      }
      writeSync(fd, table, 0, p, offset);
    } finally {
      closeSync(fd);
    }
  }

  it('prints the same table: VM SIZE through size_to_str, VM CLOCK, ICOUNT blank when not recorded, dates in local time', () => {
    img(['create', '-q', '-f', 'qcow2', 'many.qcow2', '64M']);
    const vmStateSizes = [0n, 1n, 999n, 1000n, 1023n, 1024n, 1152n, 1184n, 65535n, 1023488n, 1047552n, 1048064n, 10n ** 9n, 5_000_000_000n, 2n ** 40n + 1n, 2n ** 53n - 1n];
    const names = vmStateSizes.map((_, i) => (i === 3 ? 'exactly-16-bytes' : i === 4 ? 'seventeen-bytes!!' : i === 5 ? 'ünïcödé' : `snap${i}`));
    for (const name of names) img(['snapshot', '-c', name, 'many.qcow2']);
    const clocks = [0n, 1n, 999_999n, 1_000_000n, 59_999_000_000n, 3_599_999_999_999n, 86_400_000_000_000n, 363_723_456_789_012n];
    const icounts = [-1n, 0n, 1n, 123456789012n, 2n ** 63n - 1n, 2n ** 63n, -2n];
    patchSnapshots(
      'many.qcow2',
      vmStateSizes.map((vmStateSize, i) => ({ vmStateSize, vmClockNsec: clocks[i % clocks.length]!, icount: icounts[i % icounts.length]! })),
    );
    for (const tz of ['UTC', 'Asia/Kolkata', 'America/New_York', 'Australia/Lord_Howe']) {
      const out = expectSameList('many.qcow2', { ...process.env, TZ: tz });
      expect(out.stdout.split('\n')).toHaveLength(names.length + 3);
    }
    const out = qcowkit(['snapshot', '-l', 'many.qcow2'], work).stdout.split('\n');
    expect(out[0]).toBe('Snapshot list:');
    expect(out[1]).toBe('ID        TAG               VM SIZE                DATE     VM CLOCK     ICOUNT');
    expect(out[2]).toMatch(/^1 {9}snap0 {12} {5}0 B \d{4}-\d\d-\d\d \d\d:\d\d:\d\d 00:00:00\.000 {11}$/);
    expect(out[9]).toMatch(/ 1\.16 KiB \d{4}-\d\d-\d\d \d\d:\d\d:\d\d101:02:03\.456 {11}$/);
    expect(out[15]).toContain(' 4.66 GiB ');
  });

  it('prints the same as qemu-img info for the same image', () => {
    const info = qemu(['info', 'many.qcow2'], work).stdout;
    const list = qcowkit(['snapshot', '-l', 'many.qcow2'], work).stdout;
    expect(info).toContain(list);
  });

  it('v2 images, -U and -f qcow2', () => {
    img(['create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', 'v2.qcow2', '1M']);
    img(['snapshot', '-c', 'old', 'v2.qcow2']);
    expectSameList('v2.qcow2');
    expectSameList('v2.qcow2', undefined, ['-U']);
    expect(qcowkit(['snapshot', '-l', '-f', 'qcow2', 'v2.qcow2'], work).stdout).toBe(qemu(['snapshot', '-l', 'v2.qcow2'], work).stdout);
  });

  it('prints nothing at all without snapshots, or for a raw image', () => {
    img(['create', '-q', '-f', 'qcow2', 'none.qcow2', '1M']);
    img(['create', '-q', '-f', 'raw', 'disk.raw', '1M']);
    expect(expectSameList('none.qcow2').stdout).toBe('');
    expect(expectSameList('disk.raw').stdout).toBe('');
  });

  it('lists the snapshots of an overlay whose backing file is missing (qemu-img cannot open the chain)', () => {
    img(['create', '-q', '-f', 'qcow2', '-u', '-b', 'gone.qcow2', '-F', 'qcow2', 'orphan.qcow2', '1M']);
    img(['create', '-q', '-f', 'qcow2', 'gone.qcow2', '1M']);
    img(['snapshot', '-c', 'kept', 'orphan.qcow2']);
    rmSync(join(work, 'gone.qcow2'));
    const ours = qcowkit(['snapshot', '-l', 'orphan.qcow2'], work);
    expect(ours.status).toBe(0);
    expect(ours.stdout).toMatch(/^Snapshot list:\n.*\n1 {9}kept /);
  });

  it('-a and -d of a missing snapshot fail like qemu-img, without touching the image', () => {
    const before = createHash('sha256').update(readFileSync(join(work, 'v2.qcow2'))).digest('hex');
    const apply = qcowkit(['snapshot', '-a', 'no-such', 'v2.qcow2'], work);
    expect(apply.status).toBe(1);
    expect(apply.stderr).toBe("qcowkit: v2.qcow2: Could not apply snapshot 'no-such': Failed to load snapshot: No such file or directory\n");
    const del = qcowkit(['snapshot', '-d', 'no-such', 'v2.qcow2'], work);
    expect(del.status).toBe(1);
    expect(del.stderr).toBe("qcowkit: v2.qcow2: Could not delete snapshot 'no-such': snapshot not found\n");
    expect(createHash('sha256').update(readFileSync(join(work, 'v2.qcow2'))).digest('hex')).toBe(before);
  });

  it('usage errors exit 1 like qemu-img', () => {
    for (const args of [['-l', '-c', 'x', 'v2.qcow2'], ['-l', '-l', 'v2.qcow2'], ['-l'], ['-l', 'missing.qcow2']]) {
      const theirs = qemu(['snapshot', ...args], work);
      const ours = qcowkit(['snapshot', ...args], work);
      expect(ours.status, args.join(' ')).toBe(1);
      expect(theirs.status, args.join(' ')).toBe(1);
      expect(ours.stdout).toBe('');
    }
    expect(qcowkit(['snapshot', '-l', '-c', 'x', 'v2.qcow2'], work).stderr).toBe("qcowkit: Cannot mix '-l', '-a', '-c', '-d'\n");
    // No action at all: qemu-img opens the image and does nothing.
    expect(qemu(['snapshot', 'v2.qcow2'], work)).toMatchObject({ status: 0, stdout: '' });
    expect(qcowkit(['snapshot', 'v2.qcow2'], work)).toMatchObject({ status: 0, stdout: '' });
  });
});
