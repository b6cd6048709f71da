import { Qcow2Error } from '../../errors.js';
import { readZeroPadded, type Storage } from '../../io/storage.js';
import { randomGuid } from './guid.js';
import { currentHeader, decodeHeader, encodeHeader, HEADER_OFFSETS, HEADER_SIZE, MiB } from './header-section.js';
import { findLogSequence } from './log.js';

/** Larger logs are not replayed (qemu writes 1 MiB ones). */
const MAX_LOG = 256 * MiB;

/**
 * Replays a VHDX's log into the file, as qemu does when it opens an image for writing (qemu-img check -r):
 * every write of the active log sequence goes to its place, the file grows to what the log says it had, then
 * both headers are rewritten without a log GUID. Crash safety: the writes are idempotent and go first; the
 * headers, which make the log history, go last (each after a flush), so a replay killed halfway is replayed
 * again from the start by the next open. Returns whether there was a log to replay.
 */
export async function replayVhdxLog(storage: Storage): Promise<boolean> {
  const read = async (offset: number, length: number): Promise<Uint8Array> => {
    const bytes = new Uint8Array(length);
    await readZeroPadded(storage, bytes, offset);
    return bytes;
  };
  const raw = await Promise.all(HEADER_OFFSETS.map((offset) => read(offset, HEADER_SIZE)));
  const decoded = raw.map((bytes) => decodeHeader(bytes));
  const header = currentHeader(decoded[0], decoded[1], raw[0]!, raw[1]!);
  if (header.logGuid.every((b) => b === 0) || header.logLength === 0) return false;
  if (header.logLength > MAX_LOG || header.logLength % MiB !== 0) throw new Qcow2Error('BAD_HEADER', `VHDX log length ${header.logLength} is invalid or too large to replay`);
  const sequence = findLogSequence(await read(header.logOffset, header.logLength), header.logGuid);
  if (sequence === undefined) return false;
  const fileSize = await storage.size();
  if (sequence.flushedFileOffset > fileSize) {
    throw new Qcow2Error('TRUNCATED', `VHDX log expects a file of at least ${sequence.flushedFileOffset} bytes, the file has ${fileSize}: it has been truncated`);
  }
  const zeros = new Uint8Array(MiB);
  for (const write of sequence.writes) {
    if (write.data instanceof Uint8Array) {
      await storage.write(write.data, write.fileOffset);
      continue;
    }
    for (let done = 0; done < write.data.zeros; done += zeros.length) {
      await storage.write(zeros.subarray(0, Math.min(zeros.length, write.data.zeros - done)), write.fileOffset + done);
    }
  }
  if ((await storage.size()) < sequence.lastFileOffset) await storage.truncate(Math.ceil(sequence.lastFileOffset / MiB) * MiB);
  await storage.flush();
  // The log is empty from now on: the older header first, then the other, each newer than the last.
  const older = (decoded[0]?.sequenceNumber ?? -1) <= (decoded[1]?.sequenceNumber ?? -1) ? 0 : 1;
  const fileWriteGuid = randomGuid();
  for (const [step, index] of [older, 1 - older].entries()) {
    const next = { ...header, sequenceNumber: header.sequenceNumber + 1 + step, fileWriteGuid, dataWriteGuid: randomGuid(), logGuid: new Uint8Array(16) };
    await storage.write(encodeHeader(next), HEADER_OFFSETS[index]!);
    await storage.flush();
  }
  return true;
}
