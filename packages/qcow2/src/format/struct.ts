import { Qcow2Error } from '../errors.js';

/**
 * A tiny declarative struct codec over DataView, big-endian as qcow2 is (the `le` types are little-endian, for
 * VMDK and VHDX). It exists instead of `buffer-layout`
 * because that library needs Node's Buffer (no browsers) and decodes u64 as floats, silently losing bits above
 * 2^53; here a u64 beyond Number.MAX_SAFE_INTEGER is refused at decode time, as the architecture asks.
 */
export type FieldType = 'u8' | 'u16' | 'u32' | 'u64' | 'u16le' | 'u32le' | 'u64le';

export interface FieldSpec {
  readonly type: FieldType;
  readonly offset: number;
}

export type StructSpec<K extends string> = { readonly [P in K]: FieldSpec };
export type StructValue<K extends string> = { [P in K]: number };

const fieldSize: Record<FieldType, number> = { u8: 1, u16: 2, u32: 4, u64: 8, u16le: 2, u32le: 4, u64le: 8 };

export function viewOf(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** Reads a big-endian u64 that must fit a JS number exactly. */
export function readU64(view: DataView, offset: number, what: string): number {
  const hi = view.getUint32(offset);
  const lo = view.getUint32(offset + 4);
  if (hi > 0x1fffff) {
    throw new Qcow2Error('OFFSET_TOO_LARGE', `${what} is larger than 2^53 (0x${hi.toString(16)}${lo.toString(16).padStart(8, '0')})`);
  }
  return hi * 0x100000000 + lo;
}

/** Reads a little-endian u64 that must fit a JS number exactly. */
export function readU64le(view: DataView, offset: number, what: string): number {
  const lo = view.getUint32(offset, true);
  const hi = view.getUint32(offset + 4, true);
  if (hi > 0x1fffff) {
    throw new Qcow2Error('OFFSET_TOO_LARGE', `${what} is larger than 2^53 (0x${hi.toString(16)}${lo.toString(16).padStart(8, '0')})`);
  }
  return hi * 0x100000000 + lo;
}

export function writeU64le(view: DataView, offset: number, value: number): void {
  if (!Number.isSafeInteger(value) || value < 0) throw new RangeError(`u64 value out of range: ${value}`);
  view.setUint32(offset, value >>> 0, true);
  view.setUint32(offset + 4, Math.floor(value / 0x100000000), true);
}

export function writeU64(view: DataView, offset: number, value: number): void {
  if (!Number.isSafeInteger(value) || value < 0) throw new RangeError(`u64 value out of range: ${value}`);
  view.setUint32(offset, Math.floor(value / 0x100000000));
  view.setUint32(offset + 4, value >>> 0);
}

export function structSize<K extends string>(spec: StructSpec<K>): number {
  let end = 0;
  for (const key of Object.keys(spec) as K[]) {
    const field = spec[key];
    end = Math.max(end, field.offset + fieldSize[field.type]);
  }
  return end;
}

/**
 * Decodes the fields of `spec` from `bytes`. A u64 above 2^53 is refused, unless `exact` is false: then it is
 * the nearest number (for qemu-img check, which reports what follows from such a value instead of refusing it).
 */
export function decodeStruct<K extends string>(spec: StructSpec<K>, bytes: Uint8Array, what: string, options: { exact?: boolean } = {}): StructValue<K> {
  const view = viewOf(bytes);
  const exact = options.exact ?? true;
  const out = {} as StructValue<K>;
  for (const key of Object.keys(spec) as K[]) {
    const { type, offset } = spec[key];
    switch (type) {
      case 'u8': out[key] = view.getUint8(offset); break;
      case 'u16': out[key] = view.getUint16(offset); break;
      case 'u32': out[key] = view.getUint32(offset); break;
      case 'u64': out[key] = exact ? readU64(view, offset, `${what} field ${key}`) : view.getUint32(offset) * 0x100000000 + view.getUint32(offset + 4); break;
      case 'u16le': out[key] = view.getUint16(offset, true); break;
      case 'u32le': out[key] = view.getUint32(offset, true); break;
      case 'u64le': out[key] = readU64le(view, offset, `${what} field ${key}`); break;
    }
  }
  return out;
}

export function encodeStruct<K extends string>(spec: StructSpec<K>, value: StructValue<K>, bytes: Uint8Array): void {
  const view = viewOf(bytes);
  for (const key of Object.keys(spec) as K[]) {
    const { type, offset } = spec[key];
    const v = value[key];
    switch (type) {
      case 'u8': view.setUint8(offset, v); break;
      case 'u16': view.setUint16(offset, v); break;
      case 'u32': view.setUint32(offset, v); break;
      case 'u64': writeU64(view, offset, v); break;
      case 'u16le': view.setUint16(offset, v, true); break;
      case 'u32le': view.setUint32(offset, v, true); break;
      case 'u64le': writeU64le(view, offset, v); break;
    }
  }
}
