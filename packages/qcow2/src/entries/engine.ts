/**
 * @qcowkit/qcow2/engine: the layers below the public API, for tools that need them (the qcowkit CLI does):
 * one image's live state (Qcow2Image, Qcow2Writer, refcounts, check and repair), block devices and chains
 * (BlockDevice, Qcow2Device, RawDevice, the open policy), and the generic operations written against
 * BlockDevice (convert, compare, map, measure, commit, rebase, chain trees). Less stable than the main entry.
 *
 * @packageDocumentation
 */
export { Qcow2Error, isQcow2Error, type Qcow2ErrorCode, type Qcow2ErrorOptions, type Qcow2Structure } from '../errors.js';
export { readZeroPadded, type Storage, type StorageRegion } from '../io/storage.js';
export * from '../io/permissions.js';
export { layerPermissions, CREATE_PERMISSIONS, FORCE_SHARE_WRITABLE_MESSAGE, type ImageAccess, type LayerRole } from '../device/image-permissions.js';
export { MemoryStorage } from '../io/memory-storage.js';
export { Qcow2Image, type Qcow2ImageOptions } from '../engine/qcow2-image.js';
export { decompressCluster, zstdFrameLength, type CompressionCodecs } from '../engine/compression.js';
export { portableCodecs, portableCodecsWith, loadZstd, type ZstdWasmSource } from '../engine/portable-codecs.js';
export type { ImageLayout } from '../engine/image-layout.js';
export { createQcow2, validateCreateOptions, type CreateQcow2Options, type Preallocation } from '../engine/create-image.js';
export { Qcow2Writer, type BelowReader } from '../engine/image-writer.js';
export { Refcounts } from '../engine/refcounts.js';
export { amendImage, type AmendOptions, type AmendRunOptions, type AmendTarget } from '../engine/amend.js';
export { BitmapEditor, bitmapSource, defaultBitmapGranularity, loadBitmapState, readBitmapTable, type BitmapSource, type BitmapState } from '../engine/bitmaps.js';
export { recomputeCopied, type CreateSnapshotOptions } from '../engine/snapshots.js';
export { TableCache } from '../engine/l2-cache.js';
export type { L1Table } from '../engine/mapping.js';
export { SegmentKind, type Segment } from '../engine/segments.js';
export type { RefcountTableHeaderWriter } from '../engine/refcounts.js';
export { setBackingReference, type BackingReference } from '../engine/backing-reference.js';
export { makeEmpty, type MakeEmptyResult } from '../engine/make-empty.js';
export { checkImage, checkStorage, type CheckReport, type CheckMessage, type CheckProblemKind, type CheckOptions } from '../engine/check.js';
export { repairImage, repairStorage, type RepairMode, type RepairReport } from '../engine/repair.js';
export { hasMetadataPreallocation } from '../engine/metadata-preallocation.js';
export { isWritable, type BlockDevice, type WritableBlockDevice, type Extent, type ExtentKind, type ImageFormat } from '../device/block-device.js';
export { RawDevice } from '../device/raw-device.js';
export { Qcow2Device } from '../device/qcow2-device.js';
export { ConcatDevice } from '../device/concat-device.js';
export type { HostFiles, FileReference, ReferenceGate } from '../device/host-files.js';
export { trustingGate, untrustedGate, DEFAULT_MAX_CHAIN_DEPTH } from '../device/open-policy.js';
export { openImage, probeFormat, type OpenImageOptions } from '../device/open-image.js';
export { combinePath } from '../device/paths.js';
export { walkExtents } from '../ops/extent-walk.js';
export { mapImage, mapEntryOf, type MapEntry } from '../ops/map.js';
export { compareDevices, type CompareResult, type CompareOptions } from '../ops/compare.js';
export { convertToRaw, copyGuestData, type ConvertToRawOptions } from '../ops/convert-to-raw.js';
export { convertToSink, type ConvertToSinkOptions } from '../ops/convert-to-sink.js';
export type { ImageSink } from '../device/image-sink.js';
export type { ImageDetails, FormatCheckResult } from '../device/block-device.js';
export { VmdkDevice, type VmdkOpenContext } from '../formats/vmdk/vmdk-device.js';
export type { VmdkExtent } from '../formats/vmdk/extent.js';
export type { VmdkAdapterType } from '../formats/vmdk/descriptor.js';
export type { GrainCompressor } from '../formats/vmdk/grain-compression.js';
export { createVmdk, vmdkCreatedSize, type VmdkCreateOptions } from '../formats/vmdk/vmdk-sink.js';
export { VhdxDevice } from '../formats/vhdx/vhdx-device.js';
export type { VhdxHeader } from '../formats/vhdx/header-section.js';
export type { VhdxMetadata } from '../formats/vhdx/metadata.js';
export { replayVhdxLog } from '../formats/vhdx/log-replay.js';
export { probeBytes } from '../formats/probe.js';
export { createVhdx, vhdxCreateSizes, type VhdxCreateOptions } from '../formats/vhdx/vhdx-sink.js';
export { createImageSink, createdSize, type NewImageOptions } from '../formats/create-image-sink.js';
export { openFormatDevice, type FormatOpenContext } from '../formats/open-format.js';
export { VpcDevice } from '../formats/vpc/vpc-device.js';
export type { VhdFooter } from '../formats/vpc/footer.js';
export { createVpc, vpcCreatedSize, type VpcCreateOptions } from '../formats/vpc/vpc-sink.js';
export { vhdSizeFor, geometryFor, vhdVirtualSize, type ChsGeometry, type VhdSize } from '../formats/vpc/geometry.js';
export { convertToQcow2, type ConvertToQcow2Options, type ClusterCompressor } from '../ops/convert-to-qcow2.js';
export { RateLimiter } from '../ops/rate-limiter.js';
export { COPY_CHUNK, DEFAULT_COMPRESS_DEPTH, DEFAULT_COPY_DEPTH, MAX_COPY_DEPTH, copyPipeline, type CopyPipelineOptions } from '../ops/copy-pipeline.js';
export { SalvagingDevice, type SalvageWarning } from '../ops/salvaging-device.js';
export { clearQcow2Target, clearRawTarget } from '../ops/clear-target.js';
export { ddPlan, ddCopy, type DdOptions, type DdPlan } from '../ops/dd.js';
export { convertToQcow2Stream, convertToRawStream, type ByteSink, type ConvertStreamOptions } from '../ops/convert-stream.js';
export { isZero } from '../io/zero-detect.js';
export {
  imageInfo,
  backingChain,
  snapshotInfos,
  fullBackingFilename,
  openImageForInfo,
  type ImageInfo,
  type ImageInfoOptions,
  type SnapshotInfo,
  type BitmapInfo,
  type BitmapInfoFlag,
  type Qcow2SpecificInfo,
  type FormatSpecificInfo,
  type OpenForInfoOptions,
} from '../ops/image-info.js';
export {
  measureImage,
  measureNewImage,
  qcow2FullyAllocatedSize,
  refcountMetadataSize,
  dataClusterBytes,
  persistentBitmapsSize,
  type MeasureOptions,
  type MeasureResult,
} from '../ops/measure.js';
export { commitImage, commitPlan, commitIntoBase, emptyImageFile, findBackingDepth, chainLayers, type CommitOptions, type CommitResult, type CommitRange } from '../ops/commit.js';
export { rebaseImage, rebaseOnto, type RebaseOptions, type RebaseOntoOptions, type RebaseResult } from '../ops/rebase.js';
export {
  buildChainTree,
  type ChainTree,
  type ChainTreeOptions,
  type ChainImage,
  type ChainProblem,
  type ChainProblemCode,
  type ChainRole,
  type ChainSnapshot,
} from '../ops/chain-tree.js';
