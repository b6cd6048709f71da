import { Qcow2Error } from '../errors.js';
import {
  BITMAP_MAX_NAME_SIZE,
  BITMAP_TYPE_DIRTY_TRACKING,
  BitmapFlag,
  MAX_BITMAPS,
  MAX_BITMAP_DIRECTORY_BYTES,
  bitmapDirectoryEntrySize,
  checkBitmapEntryConstraints,
  checkBitmapsExtension,
  decodeBitmapDirectory,
  decodeBitmapsExtension,
  encodeBitmapDirectory,
  hasBitmapFlag,
  type BitmapDirectoryEntry,
} from '../format/bitmap-directory.js';
import { bitmapBit, bitmapTableSize, decodeBitmapTableEntry, encodeBitmapTableEntry, setBitmapBits, type BitmapTableEntry } from '../format/bitmap-table.js';
import { AutoclearFeature, HeaderExtensionType } from '../format/constants.js';
import { encodeBitmapsExtension, findExtension } from '../format/header-extensions.js';
import { hasBit, setBit } from '../format/header.js';
import { viewOf } from '../format/struct.js';
import { readZeroPadded } from '../io/storage.js';
import { rewriteHeader, withExtension } from './header-rewrite.js';
import type { Qcow2Image } from './qcow2-image.js';
import type { Refcounts } from './refcounts.js';

/**
 * Persistent dirty bitmaps (qcow2 spec "Bitmaps extension"; qemu's block/qcow2-bitmap.c): reading the directory
 * and tables, and changing them. Every change is a switch, as qemu stores bitmaps: new tables, data clusters and
 * directory are written in newly allocated clusters (refcounts first), then one header write names the new
 * directory (and sets autoclear bit 0, "the bitmaps are consistent"), then what only the old directory named is
 * freed. A process killed at any point leaves the old bitmaps or the new ones, and at worst leaked clusters.
 *
 * Over 400 lines on purpose: every operation of BitmapEditor (add, remove, clear, enable, merge, in-use, store,
 * resize) is one switch over the same directory and allocation state; apart, they would share that state
 * through a wider interface than the one file has now. Readers of the bitmaps (bitmap-tracker.ts, info) use only
 * the reading functions at the top.
 */

/** The bitmaps of an image as qemu would load them. */
export interface BitmapState {
  /**
   * False when the image has a bitmaps extension but autoclear bit 0 is clear: a program that does not maintain
   * bitmaps wrote to it, so qemu ignores them (the next change drops them, as qemu does).
   */
  consistent: boolean;
  entries: BitmapDirectoryEntry[];
  /** Where the current directory is (0 when there is none). */
  directoryOffset: number;
  directorySize: number;
}

/** Reads the bitmaps extension and directory, checked as qemu checks them when it loads bitmaps. */
export async function loadBitmapState(image: Qcow2Image): Promise<BitmapState> {
  const extension = findExtension(image.header.extensions, HeaderExtensionType.Bitmaps);
  const empty = { entries: [], directoryOffset: 0, directorySize: 0 };
  if (extension === undefined) return { consistent: true, ...empty };
  if (image.header.version < 3 || !hasBit(image.header.autoclearFeatures, AutoclearFeature.Bitmaps)) return { consistent: false, ...empty };
  const fields = decodeBitmapsExtension(extension.data);
  checkBitmapsExtension(fields, image.clusterSize);
  const { bitmapDirectoryOffset: offset, bitmapDirectorySize: size } = fields;
  if (offset + size > image.fileSize) {
    throw new Qcow2Error('TRUNCATED', 'bitmap directory lies past the end of the file', { file: image.name });
  }
  const bytes = new Uint8Array(size);
  await readZeroPadded(image.storage, bytes, offset);
  const geometry = { clusterSize: image.clusterSize, virtualSize: image.virtualSize };
  try {
    const entries = decodeBitmapDirectory(bytes, fields.nbBitmaps, { checkEntry: (entry) => checkBitmapEntryConstraints(entry, geometry) });
    return { consistent: true, entries, directoryOffset: offset, directorySize: size };
  } catch (error) {
    throw error instanceof Qcow2Error ? error.withFile(image.name) : error;
  }
}

/** A bitmap's table, read and validated. */
export async function readBitmapTable(image: Qcow2Image, entry: BitmapDirectoryEntry): Promise<BitmapTableEntry[]> {
  const bytes = new Uint8Array(entry.bitmapTableSize * 8);
  if (entry.bitmapTableOffset + bytes.length > image.fileSize) {
    throw new Qcow2Error('TRUNCATED', `bitmap '${entry.name}': table lies past the end of the file`, { file: image.name });
  }
  await image.storage.read(bytes, entry.bitmapTableOffset);
  const view = viewOf(bytes);
  const table: BitmapTableEntry[] = [];
  for (let i = 0; i < entry.bitmapTableSize; i++) {
    const decoded = decodeBitmapTableEntry(view, i, image.clusterSize, entry.name);
    if (decoded.kind === 'data' && decoded.offset + image.clusterSize > image.fileSize) {
      throw new Qcow2Error('TRUNCATED', `bitmap '${entry.name}': data cluster lies past the end of the file`, { file: image.name });
    }
    table.push(decoded);
  }
  return table;
}

/** The bits of table entry `entry` (one cluster of bitmap data). */
export async function readBitmapCluster(image: Qcow2Image, entry: BitmapTableEntry): Promise<Uint8Array> {
  const data = new Uint8Array(image.clusterSize);
  if (entry.kind === 'ones') data.fill(0xff);
  else if (entry.kind === 'data') await image.storage.read(data, entry.offset);
  return data;
}

/** Clusters a bitmap occupies: its table and its data clusters. */
export async function bitmapClusters(image: Qcow2Image, entry: BitmapDirectoryEntry): Promise<Array<{ offset: number; count: number }>> {
  const out = [{ offset: entry.bitmapTableOffset, count: Math.ceil((entry.bitmapTableSize * 8) / image.clusterSize) }];
  // An in-use bitmap's table is not trusted (qemu does not load it either): only the table itself is freed.
  if (hasBitmapFlag(entry.flags, BitmapFlag.InUse)) return out;
  for (const e of await readBitmapTable(image, entry)) if (e.kind === 'data') out.push({ offset: e.offset, count: 1 });
  return out;
}

/** qemu's default granularity: the cluster size, within 4 KiB..64 KiB. */
export function defaultBitmapGranularity(clusterSize: number): number {
  return Math.min(65536, Math.max(4096, clusterSize));
}

function fail(message: string, file: string): Qcow2Error {
  return new Qcow2Error('BAD_ARGUMENT', message, { file });
}

/** Bits of guest data a source offers for a merge: set ranges, in guest bytes, inside [from, to). */
export interface BitmapSource {
  /** The disk size the bitmap covers. */
  size: number;
  dirtyRanges(from: number, to: number): Promise<Array<[number, number]>>;
}

/**
 * Changes an image's persistent bitmaps; each method is one switch (see the file comment). The image's header
 * is kept current; `refcounts` is the writer's allocator.
 */
export class BitmapEditor {
  private constructor(
    private readonly image: Qcow2Image,
    private readonly refcounts: Refcounts,
    private state: BitmapState,
  ) {}

  static async open(image: Qcow2Image, refcounts: Refcounts): Promise<BitmapEditor> {
    return new BitmapEditor(image, refcounts, await loadBitmapState(image));
  }

  /** False when the bitmaps extension is not vouched for (autoclear bit 0 clear): there is nothing to maintain. */
  get consistent(): boolean {
    return this.state.consistent;
  }

  get bitmaps(): readonly BitmapDirectoryEntry[] {
    return this.state.entries;
  }

  find(name: string): BitmapDirectoryEntry | undefined {
    return this.state.entries.find((e) => e.name === name);
  }

  /** The bitmap `name`, usable (not in use): qemu's lookups and their messages. */
  usable(name: string): BitmapDirectoryEntry {
    const entry = this.find(name);
    if (entry === undefined) throw new Qcow2Error('BITMAP_NOT_FOUND', `Dirty bitmap '${name}' not found`, { file: this.image.name });
    if (hasBitmapFlag(entry.flags, BitmapFlag.InUse)) {
      throw fail(`Bitmap '${name}' is inconsistent and cannot be used\nTry block-dirty-bitmap-remove to delete this bitmap from disk`, this.image.name);
    }
    return entry;
  }

  /** qemu-img bitmap --add: a new, empty bitmap (enabled unless `disabled`). */
  async add(name: string, granularity: number | undefined, options: { disabled?: boolean } = {}): Promise<void> {
    const image = this.image;
    if (name === '') throw fail('Bitmap name cannot be empty', image.name);
    if (this.find(name) !== undefined) throw fail(`Bitmap already exists: ${name}`, image.name);
    const g = granularity ?? defaultBitmapGranularity(image.clusterSize);
    if (!Number.isInteger(Math.log2(g)) || g < 512 || g > 2 ** 31) throw fail('Granularity must be power of 2 and at least 512', image.name);
    const persistent = `Can't make bitmap '${name}' persistent in '${image.name}'`;
    if (image.header.version < 3) throw fail(`${persistent}: Cannot store dirty bitmaps in qcow2 v2 files`, image.name);
    const nameBytes = new TextEncoder().encode(name).length;
    if (nameBytes > BITMAP_MAX_NAME_SIZE) throw fail(`${persistent}: Name length exceeds maximum (${BITMAP_MAX_NAME_SIZE} characters)`, image.name);
    if (this.state.entries.length >= MAX_BITMAPS) throw fail(`${persistent}: Maximum number of persistent bitmaps is already reached`, image.name);
    const directoryBytes = this.state.entries.reduce((n, e) => n + bitmapDirectoryEntrySize(new TextEncoder().encode(e.name).length, e.extraData.length), 0);
    if (directoryBytes + bitmapDirectoryEntrySize(nameBytes, 0) > MAX_BITMAP_DIRECTORY_BYTES) throw fail(`${persistent}: Not enough space in the bitmap directory`, image.name);
    const tableSize = bitmapTableSize(image.virtualSize, g, image.clusterSize);
    const tableOffset = await this.writeTable(new Array<BitmapTableEntry>(Math.max(1, tableSize)).fill({ kind: 'zeros' }));
    const entry: BitmapDirectoryEntry = {
      bitmapTableOffset: tableOffset,
      bitmapTableSize: Math.max(1, tableSize),
      flags: options.disabled ? 0 : 1 << BitmapFlag.Auto,
      type: BITMAP_TYPE_DIRTY_TRACKING,
      granularityBits: Math.log2(g),
      name,
      extraData: new Uint8Array(0),
    };
    await this.commit([...this.state.entries, entry], []);
  }

  /** qemu-img bitmap --remove: an in-use bitmap can be removed too (it is the way out of that state). */
  async remove(name: string): Promise<void> {
    const entry = this.find(name);
    if (entry === undefined) throw new Qcow2Error('BITMAP_NOT_FOUND', `Dirty bitmap '${name}' not found`, { file: this.image.name });
    await this.commit(
      this.state.entries.filter((e) => e !== entry),
      await bitmapClusters(this.image, entry),
    );
  }

  /** qemu-img bitmap --clear: every bit to 0 (a new, empty table; the old data is freed). */
  async clear(name: string): Promise<void> {
    const entry = this.usable(name);
    const tableOffset = await this.writeTable(new Array<BitmapTableEntry>(entry.bitmapTableSize).fill({ kind: 'zeros' }));
    const freed = await bitmapClusters(this.image, entry);
    await this.commit(this.replace(entry, { ...entry, bitmapTableOffset: tableOffset }), freed);
  }

  /** qemu-img bitmap --enable / --disable: the "auto" flag (whether qemu records writes in the bitmap). */
  async setEnabled(name: string, enabled: boolean): Promise<void> {
    const entry = this.usable(name);
    const flags = enabled ? entry.flags | (1 << BitmapFlag.Auto) : entry.flags & ~(1 << BitmapFlag.Auto);
    await this.commit(this.replace(entry, { ...entry, flags }), []);
  }

  /**
   * qemu-img bitmap --merge: `target` |= the source's bits (any granularity; the disk sizes must match, as qemu
   * requires). Every data cluster of the result is written anew, so the old table and data stay intact until
   * the switch.
   */
  async merge(targetName: string, source: BitmapSource): Promise<void> {
    const image = this.image;
    const target = this.usable(targetName);
    if (source.size !== image.virtualSize) {
      throw fail(`Bitmaps are of different sizes (destination size is ${image.virtualSize}, source size is ${source.size}) and can't be merged`, image.name);
    }
    const granularity = 2 ** target.granularityBits;
    const bitsPerCluster = image.clusterSize * 8;
    const oldTable = await readBitmapTable(image, target);
    const newTable: BitmapTableEntry[] = [];
    for (let i = 0; i < oldTable.length; i++) {
      const data = await readBitmapCluster(image, oldTable[i]!);
      const clusterStart = i * bitsPerCluster * granularity;
      const clusterEnd = Math.min(image.virtualSize, (i + 1) * bitsPerCluster * granularity);
      for (const [from, to] of await source.dirtyRanges(clusterStart, clusterEnd)) {
        const firstBit = Math.floor((from - clusterStart) / granularity);
        const endBit = Math.ceil((to - clusterStart) / granularity);
        setBitmapBits(data, firstBit, endBit);
      }
      newTable.push(await this.storeCluster(data));
    }
    const tableOffset = await this.writeTable(newTable);
    const freed = await bitmapClusters(image, target);
    await this.commit(this.replace(target, { ...target, bitmapTableOffset: tableOffset }), freed);
  }

  /**
   * Sets or clears the in-use flag of bitmaps `names` (one directory switch): a writer sets it before guest data
   * first changes and clears it once the bitmaps are stored again, so a kill in between leaves them flagged
   * inconsistent (qemu then refuses to use them) rather than wrong.
   */
  async setInUse(names: readonly string[], inUse: boolean): Promise<void> {
    const bit = 1 << BitmapFlag.InUse;
    await this.commit(
      this.state.entries.map((e) => (names.includes(e.name) ? { ...e, flags: inUse ? e.flags | bit : e.flags & ~bit } : e)),
      [],
    );
  }

  /**
   * Stores bits set in memory into in-use bitmaps and clears their in-use flag, in one switch: for each bitmap,
   * `changes` maps a table index to a cluster of bits to OR in; each changed cluster is written anew (the
   * unchanged ones stay shared with the old table, which alone is freed with the replaced clusters).
   */
  async storeChanges(changes: ReadonlyMap<string, ReadonlyMap<number, Uint8Array>>): Promise<void> {
    const image = this.image;
    const freed: Array<{ offset: number; count: number }> = [];
    const entries: BitmapDirectoryEntry[] = [];
    for (const entry of this.state.entries) {
      const bits = changes.get(entry.name);
      if (bits === undefined) {
        entries.push(entry);
        continue;
      }
      const table = await readBitmapTable(image, entry);
      for (const [index, set] of bits) {
        const old = table[index];
        if (old === undefined) continue;
        const data = await readBitmapCluster(image, old);
        for (let i = 0; i < data.length; i++) data[i] = data[i]! | set[i]!;
        table[index] = await this.storeCluster(data);
        if (old.kind === 'data') freed.push({ offset: old.offset, count: 1 });
      }
      const tableOffset = await this.writeTable(table);
      freed.push({ offset: entry.bitmapTableOffset, count: Math.ceil((entry.bitmapTableSize * 8) / image.clusterSize) });
      entries.push({ ...entry, bitmapTableOffset: tableOffset, flags: entry.flags & ~(1 << BitmapFlag.InUse) });
    }
    await this.commit(entries, freed);
  }

  /**
   * The disk's size changes to `newSize` (resize, amend -o size): every bitmap that is not left inconsistent
   * gets a table for the new size — the same data clusters where they still apply, none past the new end, the
   * bits past a shrunk end cleared — and the size field changes in the same header write as the directory, so
   * qemu never meets a table that does not fit the disk (it refuses to open such an image). In-use bitmaps
   * other than `tracked` (ours, in use while we write) are kept as they are: qemu does not size-check those.
   */
  async resize(newSize: number, tracked: readonly string[]): Promise<void> {
    const image = this.image;
    const clusterSize = image.clusterSize;
    const bitsPerCluster = clusterSize * 8;
    const freed: Array<{ offset: number; count: number }> = [];
    const entries: BitmapDirectoryEntry[] = [];
    for (const entry of this.state.entries) {
      if (hasBitmapFlag(entry.flags, BitmapFlag.InUse) && !tracked.includes(entry.name)) {
        entries.push(entry);
        continue;
      }
      const granularity = 2 ** entry.granularityBits;
      const size = Math.max(1, bitmapTableSize(newSize, granularity, clusterSize));
      const old = await readBitmapTable(image, entry);
      const table: BitmapTableEntry[] = [];
      for (let i = 0; i < size; i++) table.push(old[i] ?? { kind: 'zeros' });
      for (let i = size; i < old.length; i++) if (old[i]!.kind === 'data') freed.push({ offset: (old[i] as { offset: number }).offset, count: 1 });
      // A shrink keeps no bit past the new end in the last cluster.
      const endBit = Math.ceil(newSize / granularity) - (size - 1) * bitsPerCluster;
      const last = table[size - 1]!;
      if (newSize < image.virtualSize && last.kind !== 'zeros' && endBit < bitsPerCluster) {
        const data = await readBitmapCluster(image, last);
        for (let bit = Math.max(0, endBit); bit < bitsPerCluster; bit++) data[bit >>> 3] = data[bit >>> 3]! & ~(1 << (bit & 7));
        table[size - 1] = await this.storeCluster(data);
        if (last.kind === 'data') freed.push({ offset: last.offset, count: 1 });
      }
      freed.push({ offset: entry.bitmapTableOffset, count: Math.ceil((entry.bitmapTableSize * 8) / clusterSize) });
      entries.push({ ...entry, bitmapTableOffset: await this.writeTable(table), bitmapTableSize: size });
    }
    await this.commit(entries, freed, newSize);
  }

  /** The bits of a usable bitmap as dirty guest ranges (a merge source, or convert --bitmaps). */
  sourceFor(name: string): BitmapSource {
    const entry = this.usable(name);
    return bitmapSource(this.image, entry);
  }

  private replace(old: BitmapDirectoryEntry, updated: BitmapDirectoryEntry): BitmapDirectoryEntry[] {
    return this.state.entries.map((e) => (e === old ? updated : e));
  }

  /** A data cluster holding `data` (new), or none when it is all zeros, as qemu stores bitmaps. */
  private async storeCluster(data: Uint8Array): Promise<BitmapTableEntry> {
    if (data.every((b) => b === 0)) return { kind: 'zeros' };
    const offset = await this.refcounts.allocate(1);
    await this.refcounts.flush();
    await this.image.storage.write(data, offset);
    this.grow(offset + data.length);
    return { kind: 'data', offset };
  }

  private async writeTable(table: BitmapTableEntry[]): Promise<number> {
    const bytes = new Uint8Array(Math.ceil((table.length * 8) / this.image.clusterSize) * this.image.clusterSize);
    const view = viewOf(bytes);
    table.forEach((entry, i) => encodeBitmapTableEntry(view, i, entry));
    const offset = await this.refcounts.allocate(bytes.length / this.image.clusterSize);
    await this.refcounts.flush();
    await this.image.storage.write(bytes, offset);
    this.grow(offset + bytes.length);
    return offset;
  }

  private grow(end: number): void {
    this.image.fileReaches(end);
  }

  /**
   * The switch: the new directory in new clusters, one header write naming it (or dropping the extension when
   * no bitmap is left, autoclear bit 0 with it, as qemu leaves such an image), then the old directory and
   * `freed` are released.
   */
  private async commit(entries: BitmapDirectoryEntry[], freed: Array<{ offset: number; count: number }>, size?: number): Promise<void> {
    const image = this.image;
    const clusterSize = image.clusterSize;
    let directoryOffset = 0;
    let directorySize = 0;
    if (entries.length > 0) {
      const directory = encodeBitmapDirectory(entries);
      directorySize = directory.length;
      directoryOffset = await this.refcounts.allocate(Math.ceil(directory.length / clusterSize));
      await this.refcounts.flush();
      await image.storage.write(directory, directoryOffset);
      this.grow(directoryOffset + directory.length);
    }
    await image.dataStorage.flush();
    if (image.dataStorage !== image.storage) await image.storage.flush();
    await rewriteHeader(image, (header) => {
      const extension = entries.length > 0 ? encodeBitmapsExtension({ nbBitmaps: entries.length, bitmapDirectorySize: directorySize, bitmapDirectoryOffset: directoryOffset }) : undefined;
      header.extensions = withExtension(header.extensions, HeaderExtensionType.Bitmaps, extension);
      header.autoclearFeatures = setBit(header.autoclearFeatures, AutoclearFeature.Bitmaps, entries.length > 0);
      if (size !== undefined) header.size = size;
    });
    const old = this.state;
    if (old.directoryOffset !== 0) await this.refcounts.free(old.directoryOffset, Math.ceil(old.directorySize / clusterSize));
    for (const { offset, count } of freed) await this.refcounts.free(offset, count);
    await this.refcounts.flush();
    this.state = { consistent: true, entries, directoryOffset, directorySize };
  }
}

/** A stored bitmap as dirty ranges: each set bit is `granularity` guest bytes (the last one ends at the disk's end). */
export function bitmapSource(image: Qcow2Image, entry: BitmapDirectoryEntry): BitmapSource {
  const granularity = 2 ** entry.granularityBits;
  const bitsPerCluster = image.clusterSize * 8;
  let table: BitmapTableEntry[] | undefined;
  let cached: { index: number; data: Uint8Array } | undefined;
  return {
    size: image.virtualSize,
    async dirtyRanges(from, to) {
      table ??= await readBitmapTable(image, entry);
      const out: Array<[number, number]> = [];
      const firstBit = Math.floor(from / granularity);
      const endBit = Math.ceil(to / granularity);
      for (let bit = firstBit; bit < endBit; ) {
        const index = Math.floor(bit / bitsPerCluster);
        const tableEntry = table[index];
        const clusterEnd = Math.min(endBit, (index + 1) * bitsPerCluster);
        if (tableEntry === undefined || tableEntry.kind === 'zeros') {
          bit = clusterEnd;
          continue;
        }
        if (cached?.index !== index) cached = { index, data: await readBitmapCluster(image, tableEntry) };
        const data = cached.data;
        for (; bit < clusterEnd; bit++) {
          const local = bit - index * bitsPerCluster;
          if (!bitmapBit(data, local)) continue;
          const start = Math.max(from, bit * granularity);
          const end = Math.min(to, (bit + 1) * granularity, image.virtualSize);
          const last = out[out.length - 1];
          if (last !== undefined && last[1] === start) last[1] = end;
          else out.push([start, end]);
        }
      }
      return out;
    },
  };
}
