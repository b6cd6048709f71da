import { CommandError } from '../output/errors.js';
import { U64_MAX } from './qemu-size.js';

/**
 * `-o key=value,…` lists as qemu's QemuOpts reads them, for every command that takes one (create, convert,
 * amend, measure, snapshot parameters): the splitting, qemu-img's validity check of a whole list, and the bool
 * values. What each key means is the command's business.
 */

/** "key=value,key=value": ",," escapes a comma inside a value, a bare key means on. Empty items are skipped. */
export function optionPairs(text: string): Array<[key: string, value: string]> {
  const parts = text.replace(/,,/g, '\u0000').split(',').map((p) => p.replace(/\u0000/g, ','));
  return parts
    .filter((part) => part !== '')
    .map((part) => {
      const eq = part.indexOf('=');
      return eq < 0 ? [part, 'on'] : [part.slice(0, eq), part.slice(eq + 1)];
    });
}

/** qemu-img's is_valid_option_list: not empty, no leading comma, no unpaired trailing comma. */
export function isValidOptionList(text: string): boolean {
  if (text === '' || text.startsWith(',')) return false;
  const trailing = text.length - text.replace(/,+$/, '').length;
  return trailing % 2 === 0;
}

/** Throws qemu-img's "Invalid option list" for the first list is_valid_option_list refuses. */
export function checkOptionLists(lists: readonly string[]): void {
  for (const list of lists) if (!isValidOptionList(list)) throw new CommandError(`Invalid option list: ${list}`);
}

/** A bool-typed QemuOpts value (qapi_bool_parse): on/yes/true/y and off/no/false/n. */
export function optionBool(name: string, value: string): boolean {
  if (['on', 'yes', 'true', 'y'].includes(value)) return true;
  if (['off', 'no', 'false', 'n'].includes(value)) return false;
  throw new CommandError(`Parameter '${name}' expects 'on' or 'off'`);
}

/** A number-typed QemuOpts value: strtoull with base 0 (decimal, 0x hex, 0 octal), a minus sign wrapping as C's does. */
export function optionNumber(name: string, value: string): bigint {
  const match = /^\s*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)$/.exec(value);
  if (!match) throw new CommandError(`Parameter '${name}' expects a number`);
  const digits = match[2]!;
  const magnitude = /^0[0-7]+$/.test(digits) ? BigInt(`0o${digits.slice(1)}`) : BigInt(digits);
  if (magnitude > U64_MAX) throw new CommandError(`Value '${value}' is too large for parameter '${name}'`);
  return match[1] === '-' ? BigInt.asUintN(64, -magnitude) : magnitude;
}
