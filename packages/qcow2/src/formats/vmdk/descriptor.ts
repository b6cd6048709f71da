import { Qcow2Error } from '../../errors.js';

/**
 * The VMDK descriptor: text that names the disk's type (createType), its content id (CID) and its parent's,
 * and lists its extents ("RW 4194304 SPARSE "disk-s001.vmdk""). A monolithic sparse file embeds it after its
 * header; split and flat disks keep it in a small file of its own. Parsed the way qemu parses it (block/vmdk.c),
 * which is looser than VMware's grammar: values are found by substring, and only "RW" extent lines count.
 */
export interface DescriptorExtent {
  /** Length of the extent in 512-byte sectors. */
  sectors: number;
  /** FLAT, SPARSE, VMFS, VMFSSPARSE or SESPARSE. */
  type: string;
  /** The extent's file name as written (relative names are relative to the descriptor's directory). */
  fileName: string;
  /** FLAT extents: where in the file the extent's data starts, in sectors. */
  flatOffset: number;
}

export interface VmdkDescriptor {
  /** createType, when the descriptor has one. */
  createType: string | undefined;
  cid: number | undefined;
  parentCid: number | undefined;
  /** parentFileNameHint: a delta disk's parent. */
  parentFileNameHint: string | undefined;
  extents: DescriptorExtent[];
}

/** Extent types qemu opens. */
const EXTENT_TYPES = ['FLAT', 'SPARSE', 'VMFS', 'VMFSSPARSE', 'SESPARSE'];

/** qemu's vmdk_parse_description: the quoted value after the first occurrence of `name` and two characters (`="`). */
function quotedValue(text: string, name: string): string | undefined {
  const at = text.indexOf(name);
  if (at < 0) return undefined;
  const start = at + name.length + 2;
  if (start >= text.length) return undefined;
  const end = text.indexOf('"', start);
  return end < 0 ? undefined : text.slice(start, end);
}

/** qemu's vmdk_read_cid: hex digits after the first occurrence of `name` and one character (`=`). */
function hexAfter(text: string, name: string): number | undefined {
  const at = text.indexOf(name);
  if (at < 0) return undefined;
  const match = /^[ \t\n]*(?:0[xX])?([0-9a-fA-F]+)/.exec(text.slice(at + name.length + 1));
  if (match === null) return undefined;
  // sscanf("%x") into a uint32_t keeps the low 32 bits.
  return Number(BigInt(`0x${match[1]}`) & 0xffffffffn);
}

/** "RW <sectors> <TYPE> "<file>" [<offset>]" as qemu's sscanf reads it; undefined for lines that are not extents. */
function extentLine(line: string): DescriptorExtent | undefined {
  const match = /^\s*(\S{1,10})\s+([+-]?\d+)\s+(\S{1,10})\s+"([^\n\r"]{1,511})"(?:\s+([+-]?\d+))?/.exec(line);
  if (match === null || match[1] !== 'RW') return undefined;
  const type = match[3]!;
  const hasOffset = match[5] !== undefined;
  let flatOffset = hasOffset ? Number(match[5]) : -1;
  if (type === 'FLAT') {
    if (!hasOffset || flatOffset < 0) throw new Qcow2Error('BAD_HEADER', `Invalid extent line: ${line}`);
  } else if (type === 'VMFS') {
    if (hasOffset) throw new Qcow2Error('BAD_HEADER', `Invalid extent line: ${line}`);
    flatOffset = 0;
  } else if (hasOffset) {
    throw new Qcow2Error('BAD_HEADER', `Invalid extent line: ${line}`);
  }
  const sectors = Number(match[2]);
  if (!(sectors > 0) || !EXTENT_TYPES.includes(type)) return undefined;
  if (!Number.isSafeInteger(sectors * 512) || !Number.isSafeInteger(flatOffset * 512)) {
    throw new Qcow2Error('OFFSET_TOO_LARGE', `extent line out of range: ${line}`);
  }
  return { sectors, type, fileName: match[4]!, flatOffset: Math.max(0, flatOffset) };
}

/** Parses a descriptor (text up to its first NUL, as qemu reads it). */
export function parseDescriptor(text: string): VmdkDescriptor {
  const nul = text.indexOf('\0');
  const body = nul < 0 ? text : text.slice(0, nul);
  const extents: DescriptorExtent[] = [];
  for (const line of body.split('\n')) {
    const extent = extentLine(line);
    if (extent !== undefined) extents.push(extent);
  }
  return {
    createType: quotedValue(body, 'createType'),
    cid: hexAfter(body, 'CID'),
    parentCid: hexAfter(body, 'parentCID'),
    parentFileNameHint: quotedValue(body, 'parentFileNameHint'),
    extents,
  };
}

/** Whether the first bytes of a file look like a descriptor to qemu's probe: comments, blank lines, then "version=N". */
export function looksLikeDescriptor(bytes: Uint8Array): boolean {
  let p = 0;
  const end = bytes.length;
  const startsWith = (text: string): boolean => end - p >= text.length && text.split('').every((c, i) => bytes[p + i] === c.charCodeAt(0));
  while (p < end) {
    if (bytes[p] === 0x23 /* # */) {
      while (p < end && bytes[p] !== 0x0a) p++;
      p++;
      continue;
    }
    if (bytes[p] === 0x20) {
      while (p < end && bytes[p] === 0x20) p++;
      if (p < end && bytes[p] === 0x0d) p++;
      if (p === end || bytes[p] !== 0x0a) return false;
      p++;
      continue;
    }
    return ['1', '2', '3'].some((v) => startsWith(`version=${v}\n`) || startsWith(`version=${v}\r\n`));
  }
  return false;
}

/** The descriptor's ddb.adapterType values qemu-img accepts (`-o adapter_type`). */
export type VmdkAdapterType = 'ide' | 'lsilogic' | 'buslogic' | 'legacyESX';

export interface DescriptorOptions {
  cid: number;
  createType: string;
  /** Extent lines, e.g. [{ sectors, type: 'SPARSE', fileName: 'disk.vmdk' }]. */
  extents: Array<{ sectors: number; type: string; fileName: string; flatOffset?: number }>;
  /** Disk size in bytes, for the geometry lines. */
  size: number;
  hwVersion: string;
  adapterType: VmdkAdapterType;
  toolsVersion: string;
}

/**
 * A descriptor as qemu-img writes one: the same lines in the same order. VMware's tools read the DDB lines
 * (hardware version, geometry, adapter type, tools version) when importing a disk.
 */
export function formatDescriptor(options: DescriptorOptions): string {
  // VMware reports 255 heads for every adapter but IDE; sectors per track are always 63.
  const heads = options.adapterType === 'ide' ? 16 : 255;
  const cylinders = Math.floor(options.size / (63 * heads * 512));
  const extents = options.extents
    .map((e) => `RW ${e.sectors} ${e.type} "${e.fileName}"${e.type === 'FLAT' ? ` ${e.flatOffset ?? 0}` : ''}\n`)
    .join('');
  return (
    '# Disk DescriptorFile\n' +
    'version=1\n' +
    `CID=${options.cid.toString(16)}\n` +
    'parentCID=ffffffff\n' +
    `createType="${options.createType}"\n` +
    '\n' +
    '# Extent description\n' +
    extents +
    '\n' +
    '# The Disk Data Base\n' +
    '#DDB\n' +
    '\n' +
    `ddb.virtualHWVersion = "${options.hwVersion}"\n` +
    `ddb.geometry.cylinders = "${cylinders}"\n` +
    `ddb.geometry.heads = "${heads}"\n` +
    'ddb.geometry.sectors = "63"\n' +
    `ddb.adapterType = "${options.adapterType}"\n` +
    `ddb.toolsVersion = "${options.toolsVersion}"\n`
  );
}
