/**
 * @qcowkit/qcow2/format: the qcow2 on-disk structures as pure codecs (bytes to structs and back, no I/O):
 * header and its extensions, L1/L2 and refcount entries, the snapshot table, the bitmap directory, and the
 * numbers the specification and qemu fix. For tools that read or build images byte by byte.
 *
 * @packageDocumentation
 */
export * from '../format/constants.js';
export { HEADER_LAYOUT, decodeHeader, encodeHeader, encodeHeaderFields, hasBit, type HeaderField, type Qcow2Header } from '../format/header.js';
export * from '../format/header-extensions.js';
export * from '../format/table-entries.js';
export { decodeSnapshotEntry, encodeSnapshotTable, type SnapshotEntry } from '../format/snapshot-table.js';
export * from '../format/bitmap-directory.js';
export * from '../format/bitmap-table.js';
