import type { CreateQcow2Options, Preallocation } from '@qcowkit/qcow2/engine';
import { COMPRESSION_TYPE_NAMES, isCompressionTypeName } from '@qcowkit/qcow2/format';
import { optionBool, optionNumber, optionPairs } from '../parse/option-list.js';
import { optionSizeBytes } from '../parse/qemu-size.js';
import { CommandError, printWarning } from './errors.js';

/** `-o` options of qemu-img create/convert for qcow2 and raw, parsed. */
export interface ImageOptions {
  qcow2: Omit<CreateQcow2Options, 'size'>;
  preallocation: Preallocation;
  size?: number;
  /** The options as given, for the "Formatting …" line. */
  given: Map<string, string>;
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
        options.size = optionSizeBytes(key, value, printWarning);
        break;
      case 'preallocation':
        if (!['off', 'metadata', 'falloc', 'full'].includes(value) || (format === 'raw' && value === 'metadata')) {
          throw new CommandError(`Parameter 'preallocation' does not accept value '${value}'`);
        }
        options.preallocation = value as Preallocation;
        break;
      case 'cluster_size':
        if (format !== 'qcow2') throw new CommandError(`Invalid parameter '${key}'`);
        q.clusterSize = optionSizeBytes(key, value, printWarning);
        break;
      case 'refcount_bits':
        q.refcountBits = Number(optionNumber(key, value));
        break;
      case 'compat':
        if (value === '0.10' || value === 'v2') q.compat = '0.10';
        else if (value === '1.1' || value === 'v3') q.compat = '1.1';
        else throw new CommandError(`Parameter 'compat' does not accept value '${value}'`);
        break;
      case 'lazy_refcounts':
        q.lazyRefcounts = optionBool(key, value);
        break;
      case 'extended_l2':
        q.extendedL2 = optionBool(key, value);
        break;
      case 'compression_type':
        if (!isCompressionTypeName(value)) throw new CommandError(`Parameter 'compression_type' does not accept value '${value}'`);
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
        q.dataFileRaw = optionBool(key, value);
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
  // qemu prints a bool as it was given (yes, y, true…).
  const shownBool = (key: string): string => options.given.get(key) ?? 'off';
  const fields: string[] = [`fmt=${format}`];
  const showPreallocation = options.preallocation !== 'off' || options.given.has('preallocation');
  if (format === 'raw') {
    fields.push(`size=${size}`);
    if (showPreallocation) fields.push(`preallocation=${options.preallocation}`);
    return `Formatting '${filename}', ${fields.join(' ')}`;
  }
  fields.push(`cluster_size=${q.clusterSize ?? 65536}`);
  fields.push(`extended_l2=${shownBool('extended_l2')}`);
  if (showPreallocation) fields.push(`preallocation=${options.preallocation}`);
  fields.push(`compression_type=${q.compressionType ?? COMPRESSION_TYPE_NAMES[0]}`);
  fields.push(`size=${size}`);
  if (options.given.has('compat')) fields.push(`compat=${options.given.get('compat')}`);
  if (q.backingFile !== undefined) fields.push(`backing_file=${q.backingFile}`);
  if (q.backingFormat !== undefined) fields.push(`backing_fmt=${q.backingFormat}`);
  if (q.dataFile !== undefined) fields.push(`data_file=${q.dataFile}`);
  if (q.dataFileRaw) fields.push(`data_file_raw=${shownBool('data_file_raw')}`);
  fields.push(`lazy_refcounts=${shownBool('lazy_refcounts')}`);
  fields.push(`refcount_bits=${q.refcountBits ?? 16}`);
  return `Formatting '${filename}', ${fields.join(' ')}`;
}
