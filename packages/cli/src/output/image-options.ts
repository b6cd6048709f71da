import type { CreateQcow2Options, Preallocation } from '@qcowkit/qcow2/engine';
import { CommandError } from './errors.js';
import { parseSize } from './sizes.js';

/** `-o` options of qemu-img create/convert for qcow2 and raw, parsed. */
export interface ImageOptions {
  qcow2: Omit<CreateQcow2Options, 'size'>;
  preallocation: Preallocation;
  size?: number;
  /** The options as given, for the "Formatting …" line. */
  given: Map<string, string>;
}

export function onOff(name: string, value: string): boolean {
  if (value === 'on' || value === 'true') return true;
  if (value === 'off' || value === 'false') return false;
  throw new CommandError(`Parameter '${name}' expects 'on' or 'off'`);
}

/** "key=value,key=value" as qemu's QemuOpts reads it: ",," escapes a comma inside a value, a bare key means on. */
export function optionPairs(text: string): Array<[key: string, value: string]> {
  const parts = text.replace(/,,/g, '\u0000').split(',').map((p) => p.replace(/\u0000/g, ','));
  return parts
    .filter((part) => part !== '')
    .map((part) => {
      const eq = part.indexOf('=');
      return eq < 0 ? [part, 'on'] : [part.slice(0, eq), part.slice(eq + 1)];
    });
}

/** Parses "key=value,key=value" (qemu's QemuOpts syntax; ",," escapes a comma inside a value). */
export function parseImageOptions(text: string | undefined, format: 'qcow2' | 'raw'): ImageOptions {
  const options: ImageOptions = { qcow2: {}, preallocation: 'off', given: new Map() };
  if (text === undefined || text === '') return options;
  for (const [key, value] of optionPairs(text)) {
    options.given.set(key, value);
    const q = options.qcow2;
    switch (key) {
      case 'size':
        options.size = parseSize(value);
        break;
      case 'preallocation':
        if (!['off', 'metadata', 'falloc', 'full'].includes(value) || (format === 'raw' && value === 'metadata')) {
          throw new CommandError(`Parameter 'preallocation' does not accept value '${value}'`);
        }
        options.preallocation = value as Preallocation;
        break;
      case 'cluster_size':
        if (format !== 'qcow2') throw new CommandError(`Invalid parameter '${key}'`);
        q.clusterSize = parseSize(value);
        break;
      case 'refcount_bits':
        q.refcountBits = Number(value);
        break;
      case 'compat':
        if (value === '0.10' || value === 'v2') q.compat = '0.10';
        else if (value === '1.1' || value === 'v3') q.compat = '1.1';
        else throw new CommandError(`Parameter 'compat' does not accept value '${value}'`);
        break;
      case 'lazy_refcounts':
        q.lazyRefcounts = onOff(key, value);
        break;
      case 'extended_l2':
        q.extendedL2 = onOff(key, value);
        break;
      case 'compression_type':
        if (value !== 'zlib' && value !== 'zstd') throw new CommandError(`Parameter 'compression_type' does not accept value '${value}'`);
        q.compressionType = value;
        break;
      case 'backing_file':
        q.backingFile = value;
        break;
      case 'backing_fmt':
        q.backingFormat = value;
        break;
      case 'data_file':
        q.dataFile = value;
        break;
      case 'data_file_raw':
        q.dataFileRaw = onOff(key, value);
        break;
      default:
        throw new CommandError(`Invalid parameter '${key}'`);
    }
    if (format === 'raw' && key !== 'size' && key !== 'preallocation') throw new CommandError(`Invalid parameter '${key}'`);
  }
  return options;
}

/** The "Formatting 'FILE', fmt=… " line qemu-img create and convert print, in qemu's option order. */
export function formattingLine(filename: string, format: 'qcow2' | 'raw', size: number, options: ImageOptions): string {
  const q = options.qcow2;
  const fields: string[] = [`fmt=${format}`];
  const showPreallocation = options.preallocation !== 'off' || options.given.has('preallocation');
  if (format === 'raw') {
    fields.push(`size=${size}`);
    if (showPreallocation) fields.push(`preallocation=${options.preallocation}`);
    return `Formatting '${filename}', ${fields.join(' ')}`;
  }
  fields.push(`cluster_size=${q.clusterSize ?? 65536}`);
  fields.push(`extended_l2=${q.extendedL2 ? 'on' : 'off'}`);
  if (showPreallocation) fields.push(`preallocation=${options.preallocation}`);
  fields.push(`compression_type=${q.compressionType ?? 'zlib'}`);
  fields.push(`size=${size}`);
  if (options.given.has('compat')) fields.push(`compat=${options.given.get('compat')}`);
  if (q.backingFile !== undefined) fields.push(`backing_file=${q.backingFile}`);
  if (q.backingFormat !== undefined) fields.push(`backing_fmt=${q.backingFormat}`);
  if (q.dataFile !== undefined) fields.push(`data_file=${q.dataFile}`);
  if (q.dataFileRaw) fields.push('data_file_raw=on');
  fields.push(`lazy_refcounts=${q.lazyRefcounts ? 'on' : 'off'}`);
  fields.push(`refcount_bits=${q.refcountBits ?? 16}`);
  return `Formatting '${filename}', ${fields.join(' ')}`;
}
