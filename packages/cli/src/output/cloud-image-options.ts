import type { NewImageOptions } from '@qcowkit/qcow2/engine';
import { CommandError, printWarning } from './errors.js';
import { optionBool, optionPairs } from '../parse/option-list.js';
import { optionSize, optionSizeBytes } from '../parse/qemu-size.js';

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
  /**
   * An option value qemu-img only refuses once it has printed its "Formatting" line (an enum value it does not
   * know): create prints the line, then fails with this.
   */
  refusal?: string;
}

type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;

function isOneOf<T extends string>(value: string, allowed: readonly T[]): value is T {
  return (allowed as readonly string[]).includes(value);
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
  for (const [key, value] of optionPairs(text ?? '')) {
    if (!OPTION_ORDER[format].includes(key)) throw new CommandError(`Invalid parameter '${key}'`);
    given.set(key, value);
  }
  const value = (key: string): string | undefined => given.get(key);
  const size = value('size') === undefined ? undefined : optionSizeBytes('size', value('size')!, printWarning);
  const refusals: string[] = [];
  const preallocation = value('preallocation');
  if (preallocation !== undefined) {
    if (!isOneOf(preallocation, ['off', 'falloc', 'full'])) refusals.push(`Parameter 'preallocation' does not accept value '${preallocation}'`);
    else if (preallocation !== 'off') refusals.push(`preallocation=${preallocation} is not supported for ${format} images by qcowkit (only off)`);
  }
  const image = formatOptions(format, value, refusals);
  return { format, given, image, ...(size === undefined ? {} : { size }), ...(refusals.length > 0 ? { refusal: refusals[0]! } : {}) };
}

/** The format's own options; values qemu refuses late go into `refusals`. */
function formatOptions(format: CloudFormat, value: (key: string) => string | undefined, refusals: string[]): CloudImageOptions['image'] {
  const flag = (key: string): { [k: string]: boolean } => {
    const given = value(key);
    return given === undefined ? {} : { [key]: optionBool(key, given) };
  };
  switch (format) {
    case 'vpc': {
      const subformat = value('subformat');
      if (subformat !== undefined && !isOneOf(subformat, ['dynamic', 'fixed'])) refusals.push(`Parameter 'subformat' does not accept value '${subformat}'`);
      const { force_size: forceSize } = flag('force_size');
      return {
        format,
        ...(subformat === 'dynamic' || subformat === 'fixed' ? { subformat } : {}),
        ...(forceSize === undefined ? {} : { forceSize }),
      };
    }
    case 'vmdk': {
      const { compat6, zeroed_grain: zeroedGrain } = { ...flag('compat6'), ...flag('zeroed_grain') };
      const subformat = value('subformat');
      const adapterType = value('adapter_type');
      const hwVersion = value('hwversion');
      const toolsVersion = value('toolsversion');
      if (subformat !== undefined && !isOneOf(subformat, ['monolithicSparse', 'streamOptimized'])) {
        refusals.push(
          isOneOf(subformat, ['monolithicFlat', 'twoGbMaxExtentSparse', 'twoGbMaxExtentFlat'])
            ? `subformat=${subformat} is not supported by qcowkit for writing (monolithicSparse and streamOptimized are)`
            : `invalid parameter value: ${subformat}`,
        );
      }
      if (adapterType !== undefined && !isOneOf(adapterType, ['ide', 'lsilogic', 'buslogic', 'legacyESX'])) refusals.push(`invalid parameter value: ${adapterType}`);
      if (value('backing_file') !== undefined) refusals.push('Backing files are not supported for vmdk images by qcowkit');
      return {
        format,
        ...(subformat === 'monolithicSparse' || subformat === 'streamOptimized' ? { subformat } : {}),
        ...(adapterType === 'ide' || adapterType === 'lsilogic' || adapterType === 'buslogic' || adapterType === 'legacyESX' ? { adapterType } : {}),
        ...(hwVersion === undefined || hwVersion === 'undefined' ? {} : { hwVersion }),
        ...(toolsVersion === undefined ? {} : { toolsVersion }),
        ...(compat6 === undefined ? {} : { compat6 }),
        ...(zeroedGrain === undefined ? {} : { zeroedGrain }),
      };
    }
    case 'vhdx': {
      const { block_state_zero: blockStateZero } = flag('block_state_zero');
      const subformat = value('subformat');
      const logSize = value('log_size');
      const blockSize = value('block_size');
      if (subformat !== undefined && !isOneOf(subformat, ['dynamic', 'fixed'])) refusals.push(`Parameter 'subformat' does not accept value '${subformat}'`);
      return {
        format,
        ...(subformat === 'dynamic' || subformat === 'fixed' ? { subformat } : {}),
        ...(logSize === undefined ? {} : { logSize: optionSizeBytes('log_size', logSize, printWarning) }),
        ...(blockSize === undefined ? {} : { blockSize: optionSizeBytes('block_size', blockSize, printWarning) }),
        ...(blockStateZero === undefined ? {} : { blockStateZero }),
      };
    }
  }
}

/** Options qemu prints with their defaults even when not given. */
const PRINTED_DEFAULTS: Record<CloudFormat, Record<string, string>> = {
  vpc: {},
  vmdk: { compat6: 'off', hwversion: 'undefined' },
  vhdx: { log_size: '1048576', block_size: '0' },
};

/** Options whose value qemu prints as a number of bytes (QEMU_OPT_SIZE). */
const SIZE_OPTIONS = ['log_size', 'block_size'];

/** The "Formatting 'FILE', fmt=… " line qemu-img create prints: size, then the options given, in qemu's order. */
export function cloudFormattingLine(filename: string, options: CloudImageOptions, size: number): string {
  const fields = [`fmt=${options.format}`, `size=${size}`];
  for (const key of OPTION_ORDER[options.format]) {
    if (key === 'size') continue;
    const given = options.given.get(key);
    const shown = given === undefined ? PRINTED_DEFAULTS[options.format][key] : SIZE_OPTIONS.includes(key) ? String(optionSize(key, given)) : given;
    if (shown !== undefined) fields.push(`${key}=${shown}`);
  }
  return `Formatting '${filename}', ${fields.join(' ')}`;
}
