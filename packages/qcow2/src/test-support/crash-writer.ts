/**
 * Child process for the crash-safety test: opens an image for writing and writes, zeroes, discards and
 * compresses at random until it is killed. Argument: image path, seed. Prints "ready" once writing has begun.
 */
import { isWritable } from '../device/block-device.js';
import { Qcow2Device } from '../device/qcow2-device.js';
import { clusterCompressor, openImageFile } from '../node/index.js';

const [path, seedText] = process.argv.slice(2);
let seed = Number(seedText) || 1;
function random(): number {
  seed ^= seed << 13;
  seed ^= seed >>> 17;
  seed ^= seed << 5;
  return (seed >>> 0) / 0x100000000;
}

const device = await openImageFile(path!, { writable: true });
if (!isWritable(device) || !(device instanceof Qcow2Device)) throw new Error('not a writable qcow2');
const clusterSize = device.image.clusterSize;
const compress = clusterCompressor('zlib', clusterSize);
process.stdout.write('ready\n');
for (let i = 0; ; i++) {
  const offset = Math.floor(random() * device.size);
  const length = Math.min(device.size - offset, 1 + Math.floor(random() * 256 * 1024));
  const action = random();
  if (action < 0.6) {
    await device.write(new Uint8Array(length).fill(i & 0xff), offset);
  } else if (action < 0.75) {
    await device.writeZeroes(offset, length, { unmap: random() < 0.5 });
  } else if (action < 0.85) {
    await device.discard(offset, length);
  } else {
    const cluster = Math.floor(offset / clusterSize) * clusterSize;
    if (cluster + clusterSize <= device.size) {
      const data = new Uint8Array(clusterSize).fill(i & 0x0f);
      const stored = await compress(data);
      // Like qemu, compressed writes only go to unallocated clusters; an allocated one is refused (no change).
      if (stored !== undefined) await device.writeCompressed(cluster, stored).catch((error: { code?: string }) => {
        if (error.code !== 'IO_ERROR') throw error;
      });
    }
  }
  if (random() < 0.1) await device.flush();
}
