import { QCOW2_MAGIC } from '../format/constants.js';
import type { ImageFormat } from '../device/block-device.js';
import { hasVhdxSignature } from './vhdx/header-section.js';
import { looksLikeDescriptor } from './vmdk/descriptor.js';
import { magicOf, VMDK3_MAGIC, VMDK4_MAGIC } from './vmdk/sparse-header.js';
import { hasVhdCookie } from './vpc/footer.js';

/** qemu reads this much of a file to guess its format (BLOCK_PROBE_BUF_SIZE). */
export const PROBE_BYTES = 512;

/**
 * Guesses a format from a file's first bytes the way qemu-img does when not told (-f): each format's magic at
 * offset 0 (a VMDK descriptor file by its "version=N" line), anything else raw. A fixed VHD has its footer only at the end, so qemu (and this) probe it as raw.
 */
export function probeBytes(bytes: Uint8Array): ImageFormat {
  if (bytes.length >= 4 && new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(0) === QCOW2_MAGIC) return 'qcow2';
  if (hasVhdCookie(bytes)) return 'vpc';
  if (hasVhdxSignature(bytes)) return 'vhdx';
  const magic = magicOf(bytes);
  if (magic === VMDK4_MAGIC || magic === VMDK3_MAGIC || looksLikeDescriptor(bytes)) return 'vmdk';
  return 'raw';
}
