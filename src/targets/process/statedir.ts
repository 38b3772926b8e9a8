/**
 * The state directory (/run/hotstack or $HOTSTACK_STATE_DIR), used as root:
 * whoever could plant a file there could make hotstack create or truncate
 * files anywhere, hang, or feed it addresses. So the directory is created
 * 0700, opened once without following a symbolic link and refused unless
 * owned by root or us and writable by nobody else; files in it are reached
 * through that open directory (/proc/self/fd/N/NAME, so renaming the path
 * meanwhile changes nothing), opened with O_NOFOLLOW and O_NONBLOCK (a
 * FIFO cannot block), checked through the descriptor (regular file, ours,
 * mode 0600, bounded size) before a byte is read, and new files are made
 * with O_EXCL and mode 0600.
 */
import * as fs from 'node:fs';
import { join } from 'node:path';
import { fail, HotstackError } from '../../errors.js';
import { fsError, kindOf, readBoundedFile } from '../../payload/file.js';

/** Where hotstack keeps per-process files: $HOTSTACK_STATE_DIR or /run/hotstack (read at each call). */
export function stateDir(): string {
  return process.env.HOTSTACK_STATE_DIR || '/run/hotstack';
}

/** Largest state file read (thousands of payloads fit in a few MiB). */
export const MAX_STATE_FILE = 64 * 1024 * 1024;

const { O_RDONLY, O_RDWR, O_WRONLY, O_CREAT, O_EXCL, O_NOFOLLOW, O_NONBLOCK, O_DIRECTORY } = fs.constants;

function euid(): number {
  return process.geteuid?.() ?? 0;
}

function modeText(m: number): string {
  return (m & 0o7777).toString(8).padStart(4, '0');
}

const ADVICE = 'hotstack trusts it with addresses it writes to in processes';

/** The directory or a file in it must be ours (or root's) and writable by nobody else. */
function checkOwned(st: fs.Stats, what: string, path: string): void {
  const me = euid();
  if (st.uid !== 0 && st.uid !== me) {
    fail('EPERM', `${what} ${path} is owned by uid ${st.uid}, neither root nor you (uid ${me}); ${ADVICE}: remove it, or set HOTSTACK_STATE_DIR to a directory of your own`);
  }
  if ((st.mode & 0o022) !== 0) {
    fail('EPERM', `${what} ${path} is writable by group or others (mode ${modeText(st.mode)}); ${ADVICE}: chmod 700 the directory (600 a file) after checking who wrote to it`);
  }
}

/** An open, checked state directory. */
export class StateDir {
  /** The directory as people know it, for messages. */
  readonly path: string;
  private readonly fd: number;
  private readonly dev: number;
  private readonly ino: number;

  private constructor(path: string, fd: number, st: fs.Stats) {
    this.path = path;
    this.fd = fd;
    this.dev = st.dev;
    this.ino = st.ino;
  }

  private static cached: StateDir | undefined;

  /**
   * The state directory, created (0700) when missing, checked, kept open
   * for the life of this tool (one descriptor, reopened when the path
   * names another directory since).
   */
  static open(): StateDir {
    const path = stateDir();
    const c = StateDir.cached;
    if (c && c.path === path && c.stillAt()) return c;
    const d = StateDir.openAt(path);
    if (c) c.close();
    StateDir.cached = d;
    return d;
  }

  private stillAt(): boolean {
    try {
      const st = fs.lstatSync(this.path);
      return st.dev === this.dev && st.ino === this.ino;
    } catch {
      return false;
    }
  }

  private close(): void {
    try {
      fs.closeSync(this.fd);
    } catch {
      /* already closed */
    }
  }

  private static openAt(path: string): StateDir {
    try {
      fs.mkdirSync(path, { recursive: true, mode: 0o700 });
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== 'EEXIST') {
        fail(code === 'EACCES' ? 'EACCES' : 'EIO', `cannot create state directory ${path}: ${(e as Error).message} (run as root or set HOTSTACK_STATE_DIR)`);
      }
    }
    let fd: number;
    try {
      fd = fs.openSync(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      let link = code === 'ELOOP';
      try {
        link ||= code === 'ENOTDIR' && fs.lstatSync(path).isSymbolicLink();
      } catch {
        /* gone meanwhile */
      }
      if (link) fail('EPERM', `state directory ${path} is a symbolic link; ${ADVICE}: remove the link (hotstack creates the directory itself) or set HOTSTACK_STATE_DIR`);
      if (code === 'ENOTDIR') fail('EPERM', `state directory ${path} is not a directory; remove it (hotstack creates the directory itself) or set HOTSTACK_STATE_DIR`);
      throw fsError(e, `cannot open state directory ${path}`);
    }
    try {
      const st = fs.fstatSync(fd);
      checkOwned(st, 'state directory', path);
      return new StateDir(path, fd, st);
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
  }

  /** A path that reaches `name` in this very directory (not whatever the path names now). */
  at(name: string): string {
    return `/proc/self/fd/${this.fd}/${name}`;
  }

  /** `name` as people know it, for messages. */
  shown(name: string): string {
    return join(this.path, name);
  }

  /** Names in the directory (none when it cannot be read). */
  names(): string[] {
    try {
      return fs.readdirSync(`/proc/self/fd/${this.fd}`);
    } catch {
      return [];
    }
  }

  /** Remove `name` if it is a file (a planted directory is left alone: it is reported where it matters). */
  remove(name: string): void {
    try {
      fs.unlinkSync(this.at(name));
    } catch {
      /* gone, or a directory */
    }
  }

  /**
   * Open (creating it 0600 when missing) a file that holds no data but a
   * lock: never through a symbolic link, only a regular file of ours.
   */
  openLockFile(name: string): number {
    const shown = this.shown(name);
    let fd: number;
    try {
      fd = fs.openSync(this.at(name), O_RDWR | O_CREAT | O_NOFOLLOW | O_NONBLOCK, 0o600);
    } catch (e) {
      throw this.openError(e, 'lock file', shown);
    }
    try {
      this.checkFile(fs.fstatSync(fd), 'lock file', shown);
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
    return fd;
  }

  /** The contents of state file `name`, or null when there is none. */
  readFile(name: string): Uint8Array | null {
    const shown = this.shown(name);
    // Most processes of a fleet have no file yet: say so without building two errors.
    try {
      if (fs.lstatSync(this.at(name), { throwIfNoEntry: false }) === undefined) return null;
    } catch {
      /* the read below says what is wrong */
    }
    try {
      return readBoundedFile(this.at(name), {
        what: 'state file', max: MAX_STATE_FILE, noFollow: true, allowEmpty: true,
        check: (st) => this.checkFile(st, 'state file', shown),
      });
    } catch (e) {
      if (!(e instanceof HotstackError)) throw e;
      if (e.errno === 'ENOENT') return null;
      const msg = e.message.split(this.at(name)).join(shown);
      if (/symbolic link/.test(msg)) fail('EPERM', `state file ${shown} is a symbolic link; ${ADVICE}: remove it after checking who made it`);
      if (/not a regular file/.test(msg)) fail('EPERM', `${msg}; something other than hotstack made it: remove it`);
      throw new HotstackError(e.errno, msg);
    }
  }

  /**
   * Replace file `name` with `data`, all or nothing: a new temporary file
   * (O_EXCL, O_NOFOLLOW, 0600; a leftover one is removed first, never
   * followed) is written, then renamed over it.
   */
  writeFile(name: string, data: string): void {
    const tmp = `${name}.tmp`;
    const shown = this.shown(name);
    let fd = -1;
    for (let tries = 0; fd < 0; tries++) {
      try {
        fd = fs.openSync(this.at(tmp), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o600);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST' || tries > 0) throw this.openError(e, 'temporary state file', this.shown(tmp));
        this.remove(tmp); // left by a killed hotstack (or planted): replaced, never written through
      }
    }
    try {
      const b = Buffer.from(data);
      let off = 0;
      while (off < b.length) off += fs.writeSync(fd, b, off, b.length - off);
    } catch (e) {
      fs.closeSync(fd);
      this.remove(tmp);
      throw fsError(e, `writing state file ${shown}`);
    }
    fs.closeSync(fd);
    try {
      fs.renameSync(this.at(tmp), this.at(name));
    } catch (e) {
      this.remove(tmp);
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'EISDIR' || code === 'ENOTEMPTY' || code === 'EEXIST') {
        fail('EPERM', `state file ${shown} is a directory; something other than hotstack made it: remove it`);
      }
      throw fsError(e, `writing state file ${shown}`);
    }
  }

  private checkFile(st: fs.Stats, what: string, shown: string): void {
    if (!st.isFile()) fail('EPERM', `${what} ${shown} is ${kindOf(st)}, not a regular file; something other than hotstack made it: remove it`);
    checkOwned(st, what, shown);
  }

  private openError(e: unknown, what: string, shown: string): HotstackError {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ELOOP') return new HotstackError('EPERM', `${what} ${shown} is a symbolic link; ${ADVICE}: remove it after checking who made it`);
    if (code === 'EISDIR') return new HotstackError('EPERM', `${what} ${shown} is a directory; something other than hotstack made it: remove it`);
    return fsError(e, `cannot open ${what} ${shown}`);
  }
}
