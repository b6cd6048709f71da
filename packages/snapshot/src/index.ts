/** @qcowkit/snapshot: VM disk snapshots through a hypervisor (libvirt), with all image work done by @qcowkit/qcow2. */
export { HypervisorError, SnapshotError, isHypervisorError, isSnapshotError, type HypervisorErrorCode, type SnapshotErrorCode } from './errors.js';
export {
  isQemuDomain,
  type BlockCopyOptions,
  type BlockJobInfo,
  type DiskDefinition,
  type DiskLayer,
  type DiskOnlySnapshotOptions,
  type DomainInfo,
  type DomainState,
  type Hypervisor,
  type BlockMirror,
} from './hypervisor.js';
export { LibvirtHypervisor, type LibvirtHypervisorOptions } from './libvirt/libvirt-hypervisor.js';
export { parseDomainXml, type DomainDescription } from './libvirt/domain-xml.js';
export { execFileRunner, virshError, parseBlockJobRaw, type VirshResult, type VirshRunner } from './libvirt/virsh.js';
export { parseXml, XmlSyntaxError, childElement, childElements, textContent, escapeXml, type XmlElement, type XmlNode } from './xml/xml-reader.js';
export { openChain, chainLayers } from './disk-chain.js';
export { describeDisks, type DiskChainReport } from './disks.js';
export { writeImage, type OutputFormat, type WriteImageOptions } from './write-image.js';
export {
  snapshotDomain,
  chooseDisk,
  DEFAULT_LIVE_METHOD,
  type SnapshotMode,
  type LiveMethod,
  type QuiesceMode,
  type SnapshotStep,
  type SnapshotOptions,
  type SnapshotResult,
} from './snapshot.js';
export { snapshotAllDisks, snapshotableDisks, type AllDisksOptions, type AllDisksResult, type ManifestDisk, type SnapshotManifest } from './all-disks.js';
export { recoverDomain, findLeftovers, visibleLeftovers, type RecoverOptions, type RecoveryReport, type Leftover } from './recover.js';
export { defaultStateDir, intentLogPath, readIntent, type IntentRecord, type IntentDisk, type IntentOutput, type FlowName } from './intent/intent-log.js';
export { temporaryKind, type TemporaryKind } from './intent/temporaries.js';
export type { RunOptions } from './run.js';
