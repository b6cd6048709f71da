import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readSync, rmSync, truncateSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { corpusDir, generatedDir, hasCorpus, hasQemuImg, hasQemuIo, loadManifest, qemuImg, qemuIo, requireQemuImg } from '../../../../fixtures/corpus.js';
import { formatG, sizeToStr } from '../output/human-size.js';
import { qemuJson } from '../output/json.js';
import { CLI_MAIN, qcowkit, type Run } from '../test-support/run-cli.js';

requireQemuImg();



function qemu(args: string[], cwd: string, env: NodeJS.ProcessEnv = process.env): Run {
  const r = qemuImg(args, { cwd, env });
  return { stdout: r.stdout, stderr: r.stderr, status: r.status };
}

/** Runs `info ARGS` with both tools from `cwd`: same exit status, same stdout byte for byte. */
function expectSameInfo(args: string[], cwd: string, env?: NodeJS.ProcessEnv): Run {
  const theirs = qemu(['info', ...args], cwd, env);
  const ours = qcowkit(['info', ...args], cwd, env);
  expect(ours.stdout, `qcowkit info ${args.join(' ')} (stderr: ${ours.stderr})`).toBe(theirs.stdout);
  expect(ours.status, `exit status of info ${args.join(' ')}: ${theirs.stderr} / ${ours.stderr}`).toBe(theirs.status);
  return ours;
}

/** Every output mode of info for one file. */
function expectSameInfoAllModes(file: string, cwd: string, extra: string[] = []): void {
  for (const output of ['human', 'json']) {
    expectSameInfo([`--output=${output}`, ...extra, file], cwd);
    expectSameInfo([`--output=${output}`, '--backing-chain', ...extra, file], cwd);
  }
}

describe('size_to_str', () => {
  it('formats like qemu: 1024-based units, %0.3g, switching units at 1000', () => {
    const cases: Array<[number | bigint, string]> = [
      [0, '0 B'],
      [1, '1 B'],
      [999, '999 B'],
      [1000, '0.977 KiB'],
      [1023, '0.999 KiB'],
      [1024, '1 KiB'],
      [1152, '1.12 KiB'], // 1.125: glibc rounds half to even
      [1184, '1.16 KiB'], // 1.15625
      [1536, '1.5 KiB'],
      [200704, '196 KiB'],
      [1023488, '1e+03 KiB'], // 999.5 KiB rounds to 1000 and %g switches to exponent form
      [1047552, '0.999 MiB'],
      [1048064, '1 MiB'], // 0.9995 MiB
      [8 * 1024 * 1024, '8 MiB'],
      [8458240, '8.07 MiB'],
      [5_000_000_000, '4.66 GiB'],
      [2 ** 40, '1 TiB'],
      [2 ** 50 * 3, '3 PiB'],
      [2n ** 64n - 1n, '16 EiB'],
      [-1, '16 EiB'],
    ];
    for (const [value, text] of cases) expect(sizeToStr(value), String(value)).toBe(text);
  });

  it('formats %.3g of exact binary fractions', () => {
    expect(formatG(1n, 10)).toBe('0.000977');
    expect(formatG(1n, 20)).toBe('9.54e-07');
    expect(formatG(12345n, 0)).toBe('1.23e+04');
    expect(formatG(125n, 2)).toBe('31.2'); // 31.25 -> even
    expect(formatG(127n, 2)).toBe('31.8'); // 31.75
    expect(formatG(5n, 1)).toBe('2.5');
  });
});

describe('qemu-style JSON', () => {
  it('indents by 4, opens empty containers over two lines, escapes like qemu', () => {
    expect(qemuJson({ a: 1, b: [], c: {}, d: [true, 'x'], e: undefined, f: 2n ** 63n })).toBe(
      '{\n    "a": 1,\n    "b": [\n    ],\n    "c": {\n    },\n    "d": [\n        true,\n        "x"\n    ],\n    "f": 9223372036854775808\n}',
    );
    expect(qemuJson('é\t"\\/\x7f\x01😀')).toBe('"\\u00E9\\t\\"\\\\/\\u007F\\u0001\\uD83D\\uDE00"');
    expect(qemuJson([])).toBe('[\n]');
  });
});

describe.runIf(hasQemuImg())('qcowkit info equals qemu-img info', { timeout: 180_000 }, () => {
  const work = mkdtempSync(join(tmpdir(), 'qcowkit-info-cli-'));
  afterAll(() => rmSync(work, { recursive: true, force: true }));

  beforeAll(() => {
    expect(existsSync(CLI_MAIN), `${CLI_MAIN} is missing: build first (npx tsc -b packages/qcow2 packages/cli, or npm test)`).toBe(true);
  });

  const img = (args: string[], cwd = work): void => {
    const r = qemuImg(args, { cwd });
    expect(r.status, `qemu-img ${args.join(' ')}: ${r.stderr}`).toBe(0);
  };
  const create = (file: string, size: string, options = '', cwd = work): void =>
    img(['create', '-q', '-f', 'qcow2', ...(options ? ['-o', options] : []), file, size], cwd);
  const patch = (file: string, offset: number, bytes: Uint8Array): void => {
    const fd = openSync(join(work, file), 'r+');
    writeSync(fd, bytes, 0, bytes.length, offset);
    closeSync(fd);
  };
  const u64 = (value: bigint): Uint8Array => {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, value);
    return b;
  };

  it('plain images: versions, cluster sizes, refcount widths, extended L2, zstd, lazy refcounts', () => {
    create('v3.qcow2', '8M');
    create('v2.qcow2', '1G', 'compat=0.10');
    create('c512.qcow2', '3M', 'cluster_size=512,refcount_bits=1');
    create('c2m.qcow2', '100T', 'cluster_size=2M,refcount_bits=64');
    create('features.qcow2', '5G', 'extended_l2=on,compression_type=zstd,lazy_refcounts=on');
    create('empty.qcow2', '0');
    if (hasQemuIo()) expect(qemuIo(['-c', 'write -P 3 0 1M', 'c512.qcow2'], { cwd: work }).status).toBe(0);
    for (const file of ['v3.qcow2', 'v2.qcow2', 'c512.qcow2', 'c2m.qcow2', 'features.qcow2', 'empty.qcow2']) expectSameInfoAllModes(file, work);
  }, 180_000);

  it('virtual sizes that exercise size_to_str (qcow2 sizes round down to 512, raw sizes up)', () => {
    const sizes = [512, 1000, 1023488, 1048064, 1048576 + 512, 500 * 1024 * 1024 + 3, 999 * 1024 * 1024, 10 ** 9, 2 ** 40 + 512 * 7];
    sizes.forEach((size, i) => {
      writeFileSync(join(work, `size${i}.raw`), new Uint8Array(0));
      truncateSync(join(work, `size${i}.raw`), size);
      expectSameInfo([`size${i}.raw`], work);
      expectSameInfo(['--output=json', `size${i}.raw`], work);
      if (size <= 512 * 1024 * 1024) {
        // One L1 entry (64 KiB clusters) covers 512 MiB: patch any size up to that into the header.
        create(`size${i}.qcow2`, '512M');
        patch(`size${i}.qcow2`, 24, u64(BigInt(size)));
        expectSameInfo([`size${i}.qcow2`], work);
      }
    });
  }, 180_000);

  it('external data files (raw and not), reached from another directory or not at all', () => {
    mkdirSync(join(work, 'df'), { recursive: true });
    create('with-raw.qcow2', '10M', 'data_file=with-raw.data,data_file_raw=on', join(work, 'df'));
    create('not-raw.qcow2', '10M', 'data_file=not-raw.data', join(work, 'df'));
    expectSameInfoAllModes('df/with-raw.qcow2', work);
    expectSameInfoAllModes('not-raw.qcow2', join(work, 'df'));
    rmSync(join(work, 'df/not-raw.data'));
    expectSameInfoAllModes('df/not-raw.qcow2', work);
  });

  it('bitmaps (nested lists in the human output, empty flag lists in JSON)', () => {
    create('bitmaps.qcow2', '64M', 'cluster_size=512');
    img(['bitmap', '--add', 'bitmaps.qcow2', 'b1']);
    img(['bitmap', '--add', '-g', '1M', '--disable', 'bitmaps.qcow2', 'b é 2']);
    expectSameInfoAllModes('bitmaps.qcow2', work);
    if (hasQemuIo()) {
      create('inuse.qcow2', '8M');
      img(['bitmap', '--add', 'inuse.qcow2', 'x']);
      qemuIo(['-c', 'write 0 64k', '-c', 'flush', '-c', 'abort', 'inuse.qcow2'], { cwd: work });
      expectSameInfoAllModes('inuse.qcow2', work);
    }
  });

  it('snapshots (with the icount column blank when absent), in several time zones', () => {
    create('snap.qcow2', '8M');
    img(['snapshot', '-c', 'first', 'snap.qcow2']);
    img(['snapshot', '-c', 'a much longer snapshot name é', 'snap.qcow2']);
    // Snapshot 1: icount -1 (not recorded); snapshot 2: a VM clock over 100 hours and a VM state of 4.66 GiB.
    const fd = openSync(join(work, 'snap.qcow2'), 'r+');
    try {
      const header = Buffer.alloc(72);
      readSync(fd, header, 0, 72, 0);
      const table = Number(header.readBigUInt64BE(64));
      const entry = Buffer.alloc(4096);
      readSync(fd, entry, 0, 4096, table);
      entry.writeBigUInt64BE(2n ** 64n - 1n, 40 + 16); // icount of the first entry
      const second = (40 + entry.readUInt32BE(36) + entry.readUInt16BE(12) + entry.readUInt16BE(14) + 7) & ~7;
      entry.writeBigUInt64BE(363723456789012n, second + 24);
      entry.writeUInt32BE(0, second + 32);
      entry.writeBigUInt64BE(5_000_000_000n, second + 40);
      writeSync(fd, entry, 0, 4096, table);
    } finally {
      closeSync(fd);
    }
    for (const tz of ['UTC', 'Asia/Kolkata', 'America/New_York', 'Pacific/Chatham']) {
      const env = { ...process.env, TZ: tz };
      expectSameInfo(['snap.qcow2'], work, env);
      expectSameInfo(['--output=json', 'snap.qcow2'], work, env);
    }
    const human = qcowkit(['info', 'snap.qcow2'], work).stdout;
    expect(human).toMatch(/\n1 {9}first {17}0 B \d{4}-\d\d-\d\d \d\d:\d\d:\d\d 00:00:00.000 {11}\n/);
  });

  it('dirty and corrupt images', () => {
    if (hasQemuIo()) {
      create('dirty.qcow2', '16M', 'lazy_refcounts=on');
      qemuIo(['-c', 'write 0 64k', '-c', 'flush', '-c', 'abort', 'dirty.qcow2'], { cwd: work });
      const out = expectSameInfo(['dirty.qcow2'], work);
      expect(out.stdout).toContain('cleanly shut down: no\n');
      expectSameInfo(['--output=json', 'dirty.qcow2'], work);
    }
    create('corrupt.qcow2', '1M');
    patch('corrupt.qcow2', 72, u64(0b10n));
    expectSameInfoAllModes('corrupt.qcow2', work);
  });

  it('raw images, probed or forced, and qcow2 read as raw', () => {
    writeFileSync(join(work, 'small.raw'), new Uint8Array(1000).fill(1));
    img(['create', '-q', '-f', 'raw', 'big.raw', '20G']);
    expectSameInfoAllModes('small.raw', work);
    expectSameInfoAllModes('big.raw', work, ['-f', 'raw']);
    expectSameInfoAllModes('v3.qcow2', work, ['-f', 'raw']);
    expectSameInfoAllModes('v3.qcow2', work, ['-f', 'qcow2', '-U']);
  });

  it('backing chains with relative names in subdirectories, from several working directories', () => {
    mkdirSync(join(work, 'chain/deeper'), { recursive: true });
    img(['create', '-q', '-f', 'raw', 'base.raw', '4M'], join(work, 'chain/deeper'));
    create('mid.qcow2', '4M', 'backing_file=base.raw,backing_fmt=raw', join(work, 'chain/deeper'));
    create('top.qcow2', '8M', 'backing_file=deeper/mid.qcow2,backing_fmt=qcow2', join(work, 'chain'));
    create('over.qcow2', '8M', 'backing_file=chain/top.qcow2,backing_fmt=qcow2');
    create('up.qcow2', '8M', 'backing_file=../../over.qcow2,backing_fmt=qcow2', join(work, 'chain/deeper'));
    create('abs.qcow2', '8M', `backing_file=${join(work, 'v3.qcow2')},backing_fmt=qcow2`);
    img(['snapshot', '-c', 'in-the-middle', 'chain/top.qcow2']);
    for (const file of ['over.qcow2', 'chain/top.qcow2', './chain/deeper/mid.qcow2', 'chain/deeper/up.qcow2', 'abs.qcow2']) {
      expectSameInfoAllModes(file, work);
      expectSameInfoAllModes(join(work, file), '/');
    }
    expectSameInfoAllModes('up.qcow2', join(work, 'chain/deeper'));
    expectSameInfoAllModes('../top.qcow2', join(work, 'chain/deeper'));
    const human = qcowkit(['info', 'chain/deeper/up.qcow2'], work).stdout;
    expect(human).toContain('backing file: ../../over.qcow2 (actual path: chain/deeper/../../over.qcow2)\n');
  }, 300_000);

  it('a missing backing file: info works, --backing-chain fails', () => {
    img(['create', '-q', '-f', 'qcow2', '-u', '-b', 'missing.qcow2', '-F', 'qcow2', 'orphan.qcow2', '1M']);
    expectSameInfo(['orphan.qcow2'], work);
    const chain = expectSameInfo(['--backing-chain', 'orphan.qcow2'], work);
    expect(chain.status).toBe(1);
    expect(chain.stderr).toMatch(/^qcowkit: orphan\.qcow2: could not open backing file 'missing\.qcow2': No such file or directory\n$/);
  });

  it('--untrusted reports references but does not follow them', () => {
    const plain = qcowkit(['info', '--untrusted', '--output=json', 'over.qcow2'], work);
    expect(plain.status).toBe(0);
    expect(plain.stdout).toBe(qemu(['info', '--output=json', 'over.qcow2'], work).stdout);
    const chain = qcowkit(['info', '--untrusted', '--backing-chain', 'over.qcow2'], work);
    expect(chain.status).toBe(1);
    expect(chain.stdout).toBe('');
    expect(chain.stderr).toMatch(/^qcowkit: over\.qcow2: .*refused.*\n$/);
  });

  it('usage and open errors exit 1 with one line', () => {
    for (const args of [['--output=xml', 'v3.qcow2'], ['nonexistent.qcow2'], ['-f', 'qcow2', 'small.raw'], ['-f', 'vmdk', 'small.raw'], []]) {
      const theirs = qemu(['info', ...args], work);
      const ours = qcowkit(['info', ...args], work);
      expect(ours.status, args.join(' ')).toBe(1);
      expect(theirs.status, args.join(' ')).toBe(1);
      expect(ours.stdout).toBe('');
      if (args.length > 0) expect(ours.stderr.trimEnd().split('\n'), ours.stderr).toHaveLength(1);
    }
    expect(qcowkit(['info', '--output=xml', 'v3.qcow2'], work).stderr).toBe('qcowkit: --output must be used with human or json as argument.\n');
    expect(qcowkit(['info', 'nonexistent.qcow2'], work).stderr).toBe('qcowkit: nonexistent.qcow2: No such file or directory\n');
  });
});

/** The committed corpus (and the generated large one, when there): every image of its manifest, every mode. */
describe.runIf(hasQemuImg())('qcowkit info equals qemu-img info on the fixture corpus', { timeout: 120_000 }, () => {
  const corpora = [corpusDir(), generatedDir()].filter((dir) => hasCorpus(dir));
  for (const dir of corpora) {
    const label = relative(fileURLToPath(new URL('../../../..', import.meta.url)), dir);
    for (const { file } of loadManifest(dir)) {
      it(`${label}/${file}`, () => {
        const json = expectSameInfo(['-U', '--output=json', file], dir);
        expectSameInfo(['-U', file], dir);
        // The chain modes differ from the plain ones only by the layers below (and the JSON array around them).
        if (json.stdout.includes('"backing-filename"')) expectSameInfo(['-U', '--backing-chain', file], dir);
        expectSameInfo(['-U', '--backing-chain', '--output=json', file], dir);
      });
    }
  }
});
