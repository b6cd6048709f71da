/**
 * JSON as qemu-img prints it (qobject/json-writer.c, pretty mode), which JSON.stringify(x, null, 4) does not
 * match in three ways that a byte comparison sees:
 *   - empty arrays and objects span two lines ("[" newline, indent, "]"), not "[]";
 *   - every code point outside printable ASCII is escaped as \uXXXX with upper-case hex (UTF-16 surrogate
 *     pairs beyond the BMP), DEL (0x7f) included; JSON.stringify leaves non-ASCII text as it is;
 *   - 64-bit integers beyond 2^53 (bigint) print exactly.
 * Members whose value is undefined are left out, like absent optional members.
 * Keys keep the object's own order: qemu's order is built into the info objects (see imageInfo).
 */

const hex4 = (code: number): string => `\\u${code.toString(16).toUpperCase().padStart(4, '0')}`;

/** qemu's quoted_str. */
export function qemuJsonString(text: string): string {
  let out = '"';
  for (const char of text) {
    const code = char.codePointAt(0)!;
    switch (char) {
      case '"': out += '\\"'; break;
      case '\\': out += '\\\\'; break;
      case '\b': out += '\\b'; break;
      case '\f': out += '\\f'; break;
      case '\n': out += '\\n'; break;
      case '\r': out += '\\r'; break;
      case '\t': out += '\\t'; break;
      default:
        if (code > 0xffff) {
          out += hex4(0xd800 + ((code - 0x10000) >> 10)) + hex4(0xdc00 + ((code - 0x10000) & 0x3ff));
        } else if (code < 0x20 || code >= 0x7f) {
          out += hex4(code);
        } else {
          out += char;
        }
    }
  }
  return `${out}"`;
}

function write(value: unknown, depth: number): string {
  if (value === null) return 'null';
  switch (typeof value) {
    case 'string':
      return qemuJsonString(value);
    case 'number':
      if (!Number.isFinite(value)) throw new RangeError(`cannot print ${value} as JSON`);
      return String(value);
    case 'bigint':
      return value.toString();
    case 'boolean':
      return value ? 'true' : 'false';
    case 'object':
      break;
    default:
      throw new TypeError(`cannot print a ${typeof value} as JSON`);
  }
  const inner = ' '.repeat(4 * (depth + 1));
  const outer = ' '.repeat(4 * depth);
  if (Array.isArray(value)) {
    const items = value.map((item) => `\n${inner}${write(item, depth + 1)}`);
    return `[${items.join(',')}\n${outer}]`;
  }
  const members = Object.entries(value as object)
    .filter(([, member]) => member !== undefined)
    .map(([key, member]) => `\n${inner}${qemuJsonString(key)}: ${write(member, depth + 1)}`);
  return `{${members.join(',')}\n${outer}}`;
}

/** The text qemu-img prints for `value` with --output=json, without the final newline. */
export function qemuJson(value: unknown): string {
  return write(value, 0);
}
