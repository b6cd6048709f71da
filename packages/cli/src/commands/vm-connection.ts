import { HypervisorError, LibvirtHypervisor, SnapshotError } from '@qcowkit/snapshot';
import { CommandError } from '../output/errors.js';

/** What the vm commands share: the libvirt connection they were given, and how their errors are printed. */
export interface ConnectFlags {
  connect?: string;
}

/** virsh's own default: $LIBVIRT_DEFAULT_URI, else the system QEMU driver. */
export function connection(flags: ConnectFlags): LibvirtHypervisor {
  return new LibvirtHypervisor({ uri: flags.connect ?? process.env.LIBVIRT_DEFAULT_URI ?? 'qemu:///system' });
}

/** The snapshot package's typed errors become one `qcowkit: DOMAIN: message` line. */
export async function reporting<T>(domain: string, body: () => Promise<T>): Promise<T> {
  try {
    return await body();
  } catch (error) {
    if (error instanceof SnapshotError || error instanceof HypervisorError) {
      const wrapped = new CommandError(error.message, 1, domain);
      if (process.env.QCOWKIT_DEBUG === '1') wrapped.stack = error.stack;
      throw wrapped;
    }
    throw error;
  }
}
