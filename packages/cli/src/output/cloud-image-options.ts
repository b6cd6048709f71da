import type { NewImageOptions } from '@qcowkit/qcow2/engine';
import { CommandError } from './errors.js';
import { parseSize } from './sizes.js';

/** The formats written front to back through an ImageSink. */
export type CloudFormat = 'vpc' | 'vmdk' | 'vhdx';

export function isCloudFormat(format: string): format is CloudFormat {
  return format === 'vpc' || format === 'vmdk' || format === 'vhdx';
}

/** `-o` options of qemu-img create/convert for vpc, vmdk and vhdx, parsed. */
export interface CloudImageOptions {
  format: CloudFormat;
  /** size=… given in -o. */
  size?: number;
  /** The options as given, in order, for the "Formatting …" line. */
  given: Map<string, string>;
  /** The engine's options for the new image, without the size. */
  image: DistributiveOmit<NewImageOptions, 'size'>;
}

type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;

/** qemu's bool parser (qapi_bool_parse): on/yes/true/y and off/no/false/n. */
function bool(name: string, value: string): boolean {
  if (['on', 'yes', 'true', 'y'].includes(value)) return true;
  if (['off', 'no', 'false', 'n'].includes(value)) return false;
  throw new CommandError(`Parameter '${name}' expects 'on' or 'off'`);
}

function oneOf<T extends string>(name: string, value: string, allowed: readonly T[]): T {
  if (!(allowed as readonly string[]).includes(value)) throw new CommandError(`Parameter '${name}' does not accept value '${value}'`);
  return value as T;
}

/** The options each format takes, in the order qemu lists (and prints) them; preallocation is the file's. */
const OPTION_ORDER: Record<CloudFormat, string[]> = {
  vpc: ['size', 'subformat', 'force_size', 'preallocation'],
  vmdk: ['size', 'adapter_type', 'backing_file', 'backing_fmt', 'compat6', 'hwversion', 'toolsversion', 'subformat', 'zeroed_grain', 'preallocation'],
  vhdx: ['size', 'log_size', 'block_size', 'subformat', 'block_state_zero', 'preallocation'],
};

/** Parses "key=value,key=value" (",," escapes a comma) for a vpc, vmdk or vhdx image. */
export function parseCloudImageOptions(format: CloudFormat, text: string | undefined): CloudImageOptions {
  const given = new Map<string, string>();
  for (const part of (text ?? '').replace(/,,/g, '\u0000').split(',').map((p) => p.replace(/\u0000/g, ','))) {
    if (part === '') continue;
    const eq = part.indexOf('=');
    const key = eq < 0 ? part : part.slice(0, eq);
    if (!OPTION_ORDER[format].includes(key)) throw new CommandError(`Invalid parameter '${key}'`);
    given.set(key, eq < 0 ? 'on' : part.slice(eq + 1));
  }
  const value = (key: string): string | undefined => given.get(key);
  const preallocation = value('preallocation');
  if (preallocation !== undefined) {
    oneOf('preallocation', preallocation, ['off', 'falloc', 'full']);
    if (preallocation !== 'off') throw new CommandError(`preallocation=${preallocation} is not supported for ${format} images (only off)`);
  }
  const size = value('size') === undefined ? undefined : parseSize(value('size')!);
  const options = { format, given, ...(size === undefined ? {} : { size }) };
  switch (format) {
    case 'vpc': {
      const subformat = value('subformat');
      const forceSize = value('force_size');
      return {
        ...options,
        image: {
          format,
          ...(subformat === undefined ? {} : { subformat: oneOf('subformat', subformat, ['dynamic', 'fixed'] as const) }),
          ...(forceSize === undefined ? {} : { forceSize: bool('force_size', forceSize) }),
        },
      };
    }
    default:
      throw new CommandError(`Unknown file format '${format}'`);
  }
}

/** The "Formatting 'FILE', fmt=… " line qemu-img create prints: size, then the options given, in qemu's order. */
export function cloudFormattingLine(filename: string, options: CloudImageOptions, size: number): string {
  const fields = [`fmt=${options.format}`, `size=${size}`];
  for (const key of OPTION_ORDER[options.format]) {
    if (key === 'size') continue;
    const given = options.given.get(key);
    if (given !== undefined) fields.push(`${key}=${given}`);
  }
  return `Formatting '${filename}', ${fields.join(' ')}`;
}
