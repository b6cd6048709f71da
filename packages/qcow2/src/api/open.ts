import type { ImageFormat } from '../device/block-device.js';
import type { HostFiles, ReferenceGate } from '../device/host-files.js';
import { openImage } from '../device/open-image.js';
import { untrustedGate } from '../device/open-policy.js';
import { Qcow2Error } from '../errors.js';
import type { Storage } from '../io/storage.js';
import type { Host } from './host.js';
import { Image } from './image.js';

/** Options of {@link open}. */
export interface OpenOptions {
  /** Where files come from; required when `source` is a name, and to reach backing files. */
  host?: Host;
  /** The image's format; probed from its first bytes when absent (as qemu-img does). */
  format?: ImageFormat;
  /** Open the top image for writing (its backing chain stays read-only). Default false. */
  writable?: boolean;
  /** Open the backing chain (default true); false reads unallocated ranges as zeros, like `qemu-img -u`. */
  backing?: boolean;
  /**
   * Refuse every backing and external data file the image names (CVE-2024-32498): for images that come from a
   * guest or a user. Default false (qemu-img's behaviour: follow them).
   */
  untrusted?: boolean;
  /** Decides per reference whether it may be followed (throw to refuse); overrides `untrusted`. */
  gate?: ReferenceGate;
  /** `'writeback'` (default): flush and close make writes durable; `'unsafe'`: metadata is written back, not synced. */
  cache?: 'writeback' | 'unsafe';
  /**
   * `qemu-img -U`: read even an image another process (a running guest) writes, without locking it against
   * writers; what is read may be inconsistent. Only without `writable`. Default false: with the Node host the
   * image is locked as qemu locks it, and an image in use is refused with `IMAGE_LOCKED`.
   */
  forceShare?: boolean;
}

/** Host files that answer `storage` for its own name and ask `host` for everything else. */
function filesWith(storage: Storage, host: Host | undefined): HostFiles {
  return {
    async open(name, options) {
      if (name === storage.name) return storage;
      if (host === undefined) throw new Qcow2Error('IO_ERROR', 'no host was given to open other files', { file: name });
      return host.files.open(name, options);
    },
  };
}

/**
 * Opens a disk image (qcow2 or raw) and its backing chain.
 *
 * Relative backing names resolve against the directory (or URL) of the image that names them, as qemu does;
 * loops and chains deeper than 64 are refused.
 *
 * @param source - The image's name, opened through `options.host`, or a {@link Storage} already open.
 * @param options - The host, and how to open: see {@link OpenOptions}.
 * @returns The open image; close it with `close()` or `await using`.
 * @throws {@link Qcow2Error} `IO_ERROR` when the file cannot be opened, `BAD_MAGIC`…`BAD_L2_ENTRY` for an
 *   invalid image, `BACKING_NOT_FOUND`, `BACKING_LOOP`, `CHAIN_TOO_DEEP`, `UNTRUSTED_REFERENCE`, `ENCRYPTED`,
 *   `IMAGE_LOCKED` when another process (a running qemu) holds an image of the chain (qemu's image locks).
 *
 * @example
 * ```ts
 * import { open } from '@qcowkit/qcow2';
 * import { nodeHost } from '@qcowkit/qcow2/node';
 * await using image = await open('disk.qcow2', { host: nodeHost });
 * console.log(image.virtualSize, image.clusterSize, image.backingFile, image.snapshots.length);
 * ```
 */
export async function open(source: string | Storage, options: OpenOptions = {}): Promise<Image> {
  const host = options.host;
  let files: HostFiles;
  let name: string;
  if (typeof source === 'string') {
    if (host === undefined) {
      throw new Qcow2Error('BAD_ARGUMENT', 'open() needs a host to open a file by name (nodeHost, browserHost, httpHost or memoryHost)', { file: source });
    }
    files = host.files;
    name = source;
  } else {
    files = filesWith(source, host);
    name = source.name;
  }
  const gate = options.gate ?? (options.untrusted ? untrustedGate : undefined);
  const device = await openImage(name, {
    hostFiles: files,
    ...(options.format === undefined ? {} : { format: options.format }),
    ...(gate === undefined ? {} : { gate }),
    ...(options.writable ? { writable: true } : {}),
    ...(options.backing === false ? { openBacking: false } : {}),
    ...(options.cache === undefined ? {} : { cache: options.cache }),
    ...(options.forceShare ? { forceShare: true } : {}),
    ...(host?.codecs === undefined ? {} : { codecs: host.codecs }),
  });
  return new Image(device, host);
}
