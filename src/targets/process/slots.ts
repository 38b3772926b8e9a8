/**
 * A record kept in two files written in turn, each write in place. The
 * engine saves its state inside the stop (journal, then commit), and the
 * usual atomic replace (write a temporary file, rename it over the old
 * one) costs about 0.7 ms on ext4, whose rename-over-existing heuristic
 * starts writeback: twice per action, that was most of the stall. A write
 * in place costs tens of microseconds. A tool killed in the middle of one
 * leaves that file torn, so each carries a header with a sequence number,
 * the body's length and its SHA-256: the reader takes the newest file
 * whose body checks, which is the previous record when the last write was
 * torn. Durability against power loss is not the point (the process dies
 * with the machine); a kill of the tool at any instant is.
 */
import { createHash } from 'node:crypto';
import { closeSync, constants, fstatSync, ftruncateSync, openSync, readSync, writeSync } from 'node:fs';
import { fail } from '../../errors.js';

const MAGIC = 'hotstack-state-1';
/** Longest record accepted, checked before reading a body. */
export const MAX_RECORD = 16 * 1024 * 1024;
const MAX_HEADER = 128;

/** What one slot file holds, when its record checks. */
interface Slot {
  seq: number;
  body: string;
}

function digest(body: Buffer): string {
  return createHash('sha256').update(body).digest('hex');
}

/** Encode a record: header line, then the body. */
export function encodeRecord(seq: number, body: string): Buffer {
  const b = Buffer.from(body, 'utf8');
  return Buffer.concat([Buffer.from(`${MAGIC} ${seq} ${b.length} ${digest(b)}\n`, 'latin1'), b]);
}

/**
 * Decode a record read from a slot file: null when it is not one (torn,
 * truncated, another format). `bytes` may run past the record's end.
 */
export function decodeRecord(bytes: Buffer): Slot | null {
  const nl = bytes.subarray(0, MAX_HEADER).indexOf(0x0a);
  if (nl < 0) return null;
  const m = /^hotstack-state-1 (\d{1,15}) (\d{1,9}) ([0-9a-f]{64})$/.exec(bytes.subarray(0, nl).toString('latin1'));
  if (!m) return null;
  const len = Number(m[2]);
  if (len > MAX_RECORD || nl + 1 + len > bytes.length) return null;
  const body = bytes.subarray(nl + 1, nl + 1 + len);
  if (digest(body) !== m[3]) return null;
  return { seq: Number(m[1]), body: body.toString('utf8') };
}

/** Opens a slot file for reading and writing (created if missing), checked by the caller's rules. */
export type SlotOpener = (path: string) => number;

/** The default opener: no symlinks followed, a regular file owned by us, mode 0600. */
export function openSlot(path: string): number {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDWR | constants.O_CREAT | constants.O_NOFOLLOW, 0o600);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ELOOP') fail('EPERM', `state file ${path} is a symbolic link: refusing to follow it (remove it)`);
    if (code === 'EISDIR') fail('EINVAL', `state file ${path} is a directory: remove it`);
    fail('EIO', `cannot open state file ${path}: ${(e as Error).message}`);
  }
  const st = fstatSync(fd);
  const uid = process.geteuid?.() ?? 0;
  if (!st.isFile() || st.uid !== uid || (st.mode & 0o022) !== 0) {
    closeSync(fd);
    fail('EPERM', `state file ${path} is not a regular file owned by uid ${uid} and writable only by it: remove it`);
  }
  return fd;
}

/** Two slot files holding one record; write() replaces it, read() gives the newest intact one. */
export class SlotPair {
  private readonly fds: [number, number];
  private seq = -1;

  constructor(readonly paths: [string, string], open: SlotOpener = openSlot) {
    const a = open(paths[0]);
    try {
      this.fds = [a, open(paths[1])];
    } catch (e) {
      closeSync(a);
      throw e;
    }
  }

  /** The newest intact record, or null when neither file holds one (`damaged`: some file held bytes that did not check). */
  read(): { body: string | null; damaged: boolean } {
    let best: Slot | null = null;
    let damaged = false;
    for (let i = 0; i < 2; i++) {
      const size = fstatSync(this.fds[i]!).size;
      if (size === 0) continue;
      if (size > MAX_RECORD + MAX_HEADER) {
        damaged = true;
        continue;
      }
      const buf = Buffer.alloc(size);
      let off = 0;
      while (off < size) {
        const n = readSync(this.fds[i]!, buf, off, size - off, off);
        if (n === 0) break;
        off += n;
      }
      const s = decodeRecord(buf.subarray(0, off));
      if (!s) damaged = true;
      else if (!best || s.seq > best.seq) best = s;
    }
    this.seq = best?.seq ?? Math.max(this.seq, 0);
    return { body: best?.body ?? null, damaged };
  }

  /** Replace the record: into the slot not holding the newest one, in place. */
  write(body: string): void {
    if (this.seq < 0) this.read();
    const seq = this.seq + 1;
    const fd = this.fds[seq & 1]!;
    const b = encodeRecord(seq, body);
    let off = 0;
    while (off < b.length) off += writeSync(fd, b, off, b.length - off, off);
    ftruncateSync(fd, b.length);
    this.seq = seq;
  }

  close(): void {
    for (const fd of this.fds) closeSync(fd);
  }
}
