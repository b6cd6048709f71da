/**
 * qemu's size_to_str (util/cutils.c), byte for byte: 1024-based units whose number is printed with "%0.3g",
 * switching to the next unit once the number would reach 1000 ("1000 KiB" is shown as "0.977 MiB").
 *
 *   frexp(val / (1000.0 / 1024.0), &i);  i = (i - 1) / 10;  div = 1 << (i * 10);
 *   printf("%0.3g %sB", (double)val / div, suffixes[i]);
 */
const SUFFIXES = ['', 'Ki', 'Mi', 'Gi', 'Ti', 'Pi', 'Ei'];

/** frexp's exponent: the e with x = m * 2^e, 0.5 <= m < 1 (0 for 0). */
function frexpExponent(x: number): number {
  if (x === 0 || !Number.isFinite(x)) return 0;
  let e = Math.floor(Math.log2(x)) + 1;
  // Math.log2 may be off by one ulp near powers of two: settle it exactly.
  while (2 ** (e - 1) > x) e--;
  while (2 ** e <= x) e++;
  return e;
}

function pow10(n: number): bigint {
  return 10n ** BigInt(n);
}

/**
 * C's "%.{precision}g" of the exact rational numerator / 2^shift, rounding half to even as glibc does on the
 * exact binary value (1.125 -> "1.12", where Number#toPrecision says "1.13").
 */
export function formatG(numerator: bigint, shift: number, precision = 3): string {
  if (numerator === 0n) return '0';
  const negative = numerator < 0n;
  const n = negative ? -numerator : numerator;
  const den0 = 1n << BigInt(shift);
  // Decimal exponent X with 10^X <= n / 2^shift < 10^(X+1).
  let x = Math.floor(Math.log10(Number(n) / Number(den0)));
  const below = (exp: number): boolean => (exp >= 0 ? n < pow10(exp) * den0 : n * pow10(-exp) < den0);
  while (below(x)) x--;
  while (!below(x + 1)) x++;
  // Round to `precision` significant digits: q = round(n / 2^shift * 10^(precision-1-x)).
  const scale = precision - 1 - x;
  const num = scale >= 0 ? n * pow10(scale) : n;
  const den = scale >= 0 ? den0 : den0 * pow10(-scale);
  let q = num / den;
  const twiceRemainder = 2n * (num % den);
  if (twiceRemainder > den || (twiceRemainder === den && q % 2n === 1n)) q += 1n;
  if (q === pow10(precision)) {
    q = pow10(precision - 1);
    x += 1;
  }
  const digits = q.toString();
  let text: string;
  if (x < -4 || x >= precision) {
    const mantissa = stripZeros(`${digits[0]}.${digits.slice(1)}`);
    text = `${mantissa}e${x < 0 ? '-' : '+'}${String(Math.abs(x)).padStart(2, '0')}`;
  } else if (x >= 0) {
    text = stripZeros(`${digits.slice(0, x + 1)}.${digits.slice(x + 1)}`);
  } else {
    text = stripZeros(`0.${'0'.repeat(-x - 1)}${digits}`);
  }
  return negative ? `-${text}` : text;
}

function stripZeros(fixed: string): string {
  if (!fixed.includes('.')) return fixed;
  return fixed.replace(/0+$/, '').replace(/\.$/, '');
}

/** qemu's size_to_str of a byte count (a u64: negative values wrap as in C). */
export function sizeToStr(bytes: number | bigint): string {
  const value = BigInt.asUintN(64, typeof bytes === 'bigint' ? bytes : BigInt(Math.trunc(bytes)));
  // C converts the u64 to a double first: do the same, so huge values round exactly as qemu's do.
  const asDouble = Number(value);
  const exponent = frexpExponent(asDouble / (1000 / 1024));
  const unit = Math.trunc((exponent - 1) / 10);
  return `${formatG(BigInt(asDouble), unit * 10)} ${SUFFIXES[unit]}B`;
}
