/**
 * @qcowkit/qcow2: qcow2 (and raw) disk images in Node and in browsers. One function per operation, each taking
 * an {@link Image} (from {@link open} or {@link create}) or a name and a {@link Host}; errors are one class,
 * {@link Qcow2Error}, with a stable `code`. The engine's lower layers are at `@qcowkit/qcow2/engine` and
 * `@qcowkit/qcow2/format`; hosts at `/node`, `/browser` and `/http`.
 *
 * Nothing reachable from here imports node:* (see browser-bundle.test.ts).
 *
 * @packageDocumentation
 */
export { open, type OpenOptions } from './api/open.js';
export { create, type CreateOptions } from './api/create.js';
export { read } from './api/read.js';
export { write } from './api/write.js';
export { map, type MapOptions } from './api/map.js';
export { info, type InfoOptions } from './api/info.js';
export { check, type CheckOptions, type CheckResult } from './api/check.js';
export { convert, type ConvertOptions } from './api/convert.js';
export { compare, type CompareOptions } from './api/compare.js';
export { listSnapshots } from './api/list-snapshots.js';
export { createSnapshot, type CreateSnapshotOptions } from './api/create-snapshot.js';
export { applySnapshot } from './api/apply-snapshot.js';
export { deleteSnapshot } from './api/delete-snapshot.js';
export { commit, type CommitOptions } from './api/commit.js';
export { rebase, type RebaseOptions } from './api/rebase.js';
export { Image } from './api/image.js';
export type { Host } from './api/host.js';
export { memoryHost, type MemoryHost } from './api/memory-host.js';
export { errorCodes } from './api/error-codes.js';
export { Qcow2Error, isQcow2Error, type Qcow2ErrorCode, type Qcow2ErrorOptions, type Qcow2Structure } from './errors.js';
export type { Storage, StorageRegion } from './io/storage.js';
export { MemoryStorage } from './io/memory-storage.js';
export type { HostFiles, FileReference, ReferenceGate } from './device/host-files.js';
export type { Extent, ExtentKind, ImageFormat, BlockDevice } from './device/block-device.js';
export type { CompressionCodecs } from './engine/compression.js';
export type { ClusterCompressor } from './ops/convert-to-qcow2.js';
export type { ZstdWasmSource } from './engine/portable-codecs.js';
export type { MapEntry } from './ops/map.js';
export type { CompareResult } from './ops/compare.js';
export type { ImageInfo, SnapshotInfo, BitmapInfo, BitmapInfoFlag, Qcow2SpecificInfo, FormatSpecificInfo, VmdkSpecificInfo, VmdkExtentInfo } from './ops/image-info.js';
export type { CheckReport, CheckMessage, CheckProblemKind } from './engine/check.js';
export type { RepairMode } from './engine/repair.js';
export type { CommitResult } from './ops/commit.js';
export type { RebaseResult } from './ops/rebase.js';
export type { Preallocation } from './engine/create-image.js';
