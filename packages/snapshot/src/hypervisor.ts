/**
 * The small interface the snapshot flows are written against: what they need from a hypervisor, nothing more.
 * LibvirtHypervisor implements it with virsh; tests implement it with a fake to inject failures at every step.
 */

/** libvirt's domain states, reduced to what the flows distinguish ('idle' counts as running). */
export type DomainState = 'running' | 'paused' | 'shutoff' | 'shutdown' | 'crashed' | 'pmsuspended' | 'nostate';

export interface DomainInfo {
  name: string;
  state: DomainState;
  /** Has a persistent definition (a transient domain disappears when it stops). */
  persistent: boolean;
  /** The domain's type attribute: 'kvm' and 'qemu' are QEMU (live snapshots possible); 'xen', 'lxc', … are not. */
  virtType: string;
}

/** One image of a disk's chain, as the domain XML describes it. */
export interface DiskLayer {
  /** 'file', 'block', 'network', 'volume', … (the disk or backingStore type attribute). */
  type: string;
  /** The local path (source file or dev); undefined for network and volume sources. */
  path: string | undefined;
  /** The format libvirt uses for this layer (driver type, or backingStore format): 'qcow2', 'raw', … */
  format: string | undefined;
  /** The qcow2 external data file (dataStore), when the XML names one. */
  dataFile?: string;
}

export interface DiskDefinition {
  /** The target device name the guest sees: 'vda', 'sda', 'hdc'… */
  target: string;
  bus: string | undefined;
  /** 'disk', 'cdrom', 'floppy', 'lun'. */
  device: string;
  readonly: boolean;
  /** The device alias in the running QEMU ('virtio-disk0'), only in a running domain's XML. */
  alias: string | undefined;
  /** chain[0] is the image the guest writes to, then its backing files, top-down. */
  chain: DiskLayer[];
  /**
   * Whether the XML states where the chain ends (a running domain's XML lists every backing file and closes
   * with an empty backingStore). False for most inactive definitions: the backing files are then found from
   * the image headers, as libvirt does when it starts the domain.
   */
  chainComplete: boolean;
}

export interface BlockJobInfo {
  /** 'Block Copy', 'Active Block Commit', 'Block Commit', 'Block Pull', 'Backup', … */
  type: string;
  cur: number;
  end: number;
  bandwidth: number;
}

export interface BlockCopyOptions {
  /** Copy only the top image (the destination already has the rest as its backing chain). */
  shallow: boolean;
  /** The destination exists already (created by the caller). */
  reuseExternal: boolean;
  /** Let the copy run on a persistent domain without undefining it (libvirt ≥ 1.2.19 + virsh flag). */
  transientJob: boolean;
  /** The destination's format. */
  format: string;
}

export interface DiskOnlySnapshotOptions {
  /** The disk to snapshot and the overlay to create for it (libvirt creates the file). */
  target: string;
  overlay: string;
  /** The domain's other disks: left out of the snapshot. */
  otherTargets: readonly string[];
  /** Freeze the guest's file systems through the guest agent around the snapshot. */
  quiesce: boolean;
}

export interface Hypervisor {
  /** The connection, for messages ('qemu:///system'). */
  readonly uri: string;
  domainInfo(domain: string): Promise<DomainInfo>;
  /** Just the run state (cheaper than domainInfo). */
  domainState(domain: string): Promise<DomainState>;
  /** The domain's disks from its XML: the live definition, or the persistent one with `inactive`. */
  disks(domain: string, options?: { inactive?: boolean }): Promise<DiskDefinition[]>;
  /** Names of all defined or running domains. */
  listDomains(): Promise<string[]>;
  suspend(domain: string): Promise<void>;
  resume(domain: string): Promise<void>;
  /** Saves the guest's memory and stops it; the next start restores it. */
  managedSave(domain: string): Promise<void>;
  start(domain: string, options: { paused: boolean }): Promise<void>;
  dumpXml(domain: string, options: { inactive: boolean; securityInfo: boolean }): Promise<string>;
  define(xml: string): Promise<void>;
  /** Removes the persistent definition (a running domain becomes transient). Keeps NVRAM files. */
  undefine(domain: string): Promise<void>;
  /** Starts a block copy of `target` into `destination` and returns once it mirrors (the copy is complete). */
  blockCopy(domain: string, target: string, destination: string, options: BlockCopyOptions): Promise<void>;
  /** The block job running on the disk, if any. */
  blockJob(domain: string, target: string): Promise<BlockJobInfo | undefined>;
  /** Ends the disk's block job, without pivoting: the guest stays on its disk. Returns when the job is gone. */
  abortBlockJob(domain: string, target: string): Promise<void>;
  /** An external, disk-only, atomic snapshot without libvirt snapshot metadata. */
  snapshotDiskOnly(domain: string, options: DiskOnlySnapshotOptions): Promise<void>;
  /**
   * Active commit of the disk's top image into the image just below it (shallow), then pivot: the guest writes
   * to that image again. Returns when the pivot is done.
   */
  blockCommitActive(domain: string, target: string): Promise<void>;
  /** Freezes the guest's file systems through the guest agent. */
  fsFreeze(domain: string): Promise<void>;
  fsThaw(domain: string): Promise<void>;
  /** A QEMU monitor command (HMP when `hmp`, else QMP JSON); returns its output. For tests and diagnostics. */
  monitorCommand(domain: string, command: string, options: { hmp: boolean }): Promise<string>;
}

/** Whether the domain runs on QEMU (where blockcopy, external snapshots and active commit exist). */
export function isQemuDomain(info: DomainInfo): boolean {
  return info.virtType === 'kvm' || info.virtType === 'qemu';
}
