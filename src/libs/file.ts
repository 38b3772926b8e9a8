/**
 * Opening files found by a search (libraries, the ld.so cache) safely:
 * regular files only, opened without blocking (a FIFO planted on a search
 * path must not hang the tool), size known before anything is allocated,
 * and every read from the one descriptor that was checked.
 */
import { closeSync, constants, fstatSync, openSync, readSync } from 'node:fs';
import { fail } from '../errors.js';

/** A regular file open for reading. */
export interface OpenFile {
  readonly size: number;
  /** Up to `len` bytes at `pos` (fewer only at the end of the file). */
  read(pos: number, len: number): Buffer;
}

/**
 * Run `fn` on the file at `path` and close it. Returns null when there is
 * no such file (ENOENT, ENOTDIR: a search simply moves on); throws
 * HotstackError for a file that exists but is not a readable regular file
 * or is larger than `maxSize`.
 */
export function withRegularFile<T>(path: string, maxSize: number, fn: (f: OpenFile) => T): T | null {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return null;
    throw e;
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) fail('EINVAL', `${path} is not a regular file`);
    if (st.size > maxSize) fail('EINVAL', `${path} is ${st.size} bytes, more than the ${maxSize} accepted`);
    const size = st.size;
    return fn({
      size,
      read(pos: number, len: number): Buffer {
        const n = Math.max(0, Math.min(len, size - pos));
        const buf = Buffer.alloc(n);
        let got = 0;
        while (got < n) {
          const r = readSync(fd, buf, got, n - got, pos + got);
          if (r === 0) break;
          got += r;
        }
        return buf.subarray(0, got);
      },
    });
  } finally {
    closeSync(fd);
  }
}
