/**
 * Reading user-named files (payloads, detached signatures, keys) without
 * trusting what the path names: the file is opened first, then checked
 * through its descriptor (regular file, size within a limit), and only
 * then read, exactly that many bytes. A path naming /dev/zero, a FIFO, a
 * directory or a 2 GiB sparse file is refused before a byte is read, so
 * it can neither block the tool nor exhaust its memory.
 */
import { closeSync, constants, fstatSync, openSync, readSync, type Stats } from 'node:fs';
import { fail, HotstackError, isErrnoName, toHotstackError, type ErrnoName } from '../errors.js';
import { MAX_PAYLOAD_SIZE } from './sections.js';

export interface ReadOptions {
  /** What the file is, for messages ("payload", "public key", ...). */
  what: string;
  /** Largest accepted size in bytes. */
  max: number;
  /** Refuse a symbolic link as the last path component (O_NOFOLLOW). */
  noFollow?: boolean;
  /** Extra checks on the open file (ownership, mode), before anything is read. */
  check?: (st: Stats) => void;
  /** An empty file is fine (configuration); payloads, keys and signatures never are. */
  allowEmpty?: boolean;
}

/**
 * A failed file system call as a HotstackError: its own errno when hotstack
 * knows it (ENOENT, EACCES, ...), else EINVAL (ELOOP, ENOTDIR,
 * ENAMETOOLONG: the path is wrong), never an "internal error".
 */
export function fsError(e: unknown, context: string): HotstackError {
  const err = e as NodeJS.ErrnoException;
  if (e instanceof HotstackError || typeof err?.code !== 'string') {
    const h = toHotstackError(e);
    return new HotstackError(h.errno, `${context}: ${h.message}`);
  }
  const why = String(err.message).replace(/^E[A-Z0-9]+: /, '').replace(/, (open|read|fstat|link|rename|scandir) .*$/, '');
  const known = isErrnoName(err.code);
  return new HotstackError(known ? err.code as ErrnoName : 'EINVAL', `${context}: ${why}${known ? '' : ` (${err.code})`}`);
}

/** A short name for what a non-regular file is, for messages. */
export function kindOf(st: Stats): string {
  if (st.isDirectory()) return 'a directory';
  if (st.isFIFO()) return 'a FIFO';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  if (st.isSocket()) return 'a socket';
  return 'not a regular file';
}

/**
 * Open `path`, check it through the descriptor, read it whole. O_NONBLOCK
 * keeps the open of a FIFO from waiting for a writer (it is then refused
 * as not a regular file); on a regular file the flag changes nothing.
 */
export function readBoundedFile(path: string, opts: ReadOptions): Uint8Array {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK | (opts.noFollow ? constants.O_NOFOLLOW : 0));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ELOOP' && opts.noFollow) {
      fail('EPERM', `${opts.what} ${path} is a symbolic link; give the file itself`);
    }
    throw fsError(e, `cannot open ${opts.what} ${path}`);
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) fail('EINVAL', `${opts.what} ${path} is ${kindOf(st)}, not a regular file`);
    opts.check?.(st);
    if (st.size === 0 && !opts.allowEmpty) fail('EINVAL', `${opts.what} file ${path} is empty`);
    // EINVAL, as Xen refuses an oversized upload; checked before a byte is read.
    if (st.size > opts.max) fail('EINVAL', `${opts.what} file ${path} is ${st.size} bytes; at most ${opts.max} are accepted`);
    const buf = Buffer.alloc(st.size);
    let off = 0;
    while (off < buf.length) {
      const n = readSync(fd, buf, off, buf.length - off, off);
      if (n === 0) fail('EIO', `${opts.what} file ${path} shrank while it was being read (${off} of ${buf.length} bytes); try again`);
      off += n;
    }
    return new Uint8Array(buf.buffer, buf.byteOffset, buf.length);
  } catch (e) {
    if (e instanceof HotstackError) throw e;
    throw fsError(e, `reading ${opts.what} ${path}`);
  } finally {
    closeSync(fd);
  }
}

/**
 * A payload file, bounded by the upload limit (2 MiB, Xen's
 * LIVEPATCH_MAX_SIZE). Symbolic links to payloads are fine: the path is
 * the user's choice, and what is read is checked like any payload.
 */
export function readPayloadFile(path: string): Uint8Array {
  return readBoundedFile(path, { what: 'payload', max: MAX_PAYLOAD_SIZE });
}
