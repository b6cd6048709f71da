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
  /** The domain's UUID: what names its intent log (a name can change, the UUID does not). */
  uuid: string;
  /** A managed save image exists: the next start restores the saved guest. */
  managedSave: boolean;
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
  /** The block job that copies from or into this disk, as the running domain's XML shows it (<mirror>). */
  mirror?: BlockMirror;
}

/** A disk's block job as the domain XML describes it: what it copies into, and whether it can be completed. */
export interface BlockMirror {
  /** libvirt's job name: 'copy' (blockcopy), 'active-commit', … */
  job: string;
  /** The image the job writes: the copy's destination, or the commit's base. */
  path: string | undefined;
  /** The job caught up (a copy mirrors, an active commit can pivot). */
  ready: boolean;
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
  /** The disks to snapshot, each with the overlay libvirt creates for it: all at one instant (one transaction). */
  overlays: ReadonlyArray<{ target: string; overlay: string }>;
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
  /**
   * Starts a block copy of `target` into `destination` and returns once it mirrors (the copy is complete). The
   * job belongs to libvirt: if the caller dies meanwhile, it goes on (and mirrors for ever until aborted).
   */
  blockCopy(domain: string, target: string, destination: string, options: BlockCopyOptions): Promise<void>;
  /** The block job running on the disk, if any. */
  blockJob(domain: string, target: string): Promise<BlockJobInfo | undefined>;
  /** Ends the disk's block job, without pivoting: the guest stays on its disk. Returns when the job is gone. */
  abortBlockJob(domain: string, target: string): Promise<void>;
  /** An external, disk-only, atomic snapshot without libvirt snapshot metadata. */
  snapshotDiskOnly(domain: string, options: DiskOnlySnapshotOptions): Promise<void>;
  /**
   * Starts an active commit of the disk's top image into the image just below it (shallow) and returns once the
   * job is ready to pivot: the image below holds everything, and QEMU mirrors new writes into it too. The guest
   * still writes to the top image until pivotBlockJob.
   */
  blockCommitActive(domain: string, target: string): Promise<void>;
  /** Completes the disk's ready job: after an active commit the guest writes to the image below the top again. */
  pivotBlockJob(domain: string, target: string): Promise<void>;
  /** Waits until the disk's block job is ready (see BlockMirror.ready); fails if the job ends instead. */
  waitBlockJobReady(domain: string, target: string): Promise<void>;
  /** Freezes the guest's file systems through the guest agent. */
  fsFreeze(domain: string): Promise<void>;
  fsThaw(domain: string): Promise<void>;
  /** Whether the guest agent reports its file systems frozen. */
  fsFrozen(domain: string): Promise<boolean>;
  /** A QEMU monitor command (HMP when `hmp`, else QMP JSON); returns its output. For tests and diagnostics. */
  monitorCommand(domain: string, command: string, options: { hmp: boolean }): Promise<string>;
}

/** Whether the domain runs on QEMU (where blockcopy, external snapshots and active commit exist). */
export function isQemuDomain(info: DomainInfo): boolean {
  return info.virtType === 'kvm' || info.virtType === 'qemu';
}
