/** Shown as itself in qemu-io's dump (isalnum in the C locale): letters and digits; anything else is a dot. */
function printable(byte: number): string {
  const c = String.fromCharCode(byte);
  return /^[A-Za-z0-9]$/.test(c) ? c : '.';
}

/**
 * A hex dump in the format of `qemu-io -c "read -v OFFSET LENGTH"`: 16 bytes a line, the offset in 8 hex digits,
 * then the bytes, then their characters. Lines are of `bytes` read at guest `offset`.
 */
export function hexDump(bytes: Uint8Array, offset: number): string {
  const lines: string[] = [];
  for (let at = 0; at < bytes.length; at += 16) {
    const row = bytes.subarray(at, at + 16);
    const hex = Array.from(row, (b) => `${b.toString(16).padStart(2, '0')} `).join('');
    const text = Array.from(row, printable).join('');
    lines.push(`${(offset + at).toString(16).padStart(8, '0')}:  ${hex} ${text}`);
  }
  return lines.join('\n');
}
