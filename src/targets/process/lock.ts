/**
 * One hotstack at a time per process: an flock on a file named after the
 * process's identity (pid + start time, so a recycled pid is a different
 * process). flock locks die with the file descriptor, so a hotstack killed
 * with SIGKILL never leaves one held.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fail } from '../../errors.js';
import * as pt from './ptrace.js';
import { readProcFile } from './maps.js';

/** Who a process is, in a way that survives pid reuse. */
export interface ProcessIdentity {
  pid: number;
  /** Field 22 of /proc/PID/stat: start time in clock ticks after boot. */
  startTime: bigint;
  /** `${pid}-${startTime}`: names state and lock files. */
  key: string;
  /** Command name (field 2 of /proc/PID/stat), for messages. */
  comm: string;
}

function parseStat(pid: number): { comm: string; fields: string[] } {
  const stat = readProcFile(pid, 'stat');
  const open = stat.indexOf('(');
  const close = stat.lastIndexOf(')');
  if (open < 0 || close < 0) fail('EIO', `cannot parse /proc/${pid}/stat`);
  // fields[0] is field 3 (state): comm may contain spaces and parentheses.
  return { comm: stat.slice(open + 1, close), fields: stat.slice(close + 2).trim().split(' ') };
}

/** Start time of a process (clock ticks after boot); ESRCH when it does not exist. */
export function processStartTime(pid: number): bigint {
  const v = parseStat(pid).fields[22 - 3];
  if (v === undefined || !/^\d+$/.test(v)) fail('EIO', `cannot parse the start time in /proc/${pid}/stat`);
  return BigInt(v);
}

/** pid, start time and name of a process; ESRCH when it does not exist. */
export function processIdentity(pid: number): ProcessIdentity {
  if (!Number.isInteger(pid) || pid <= 0) fail('EINVAL', `invalid process id ${pid}`);
  const { comm, fields } = parseStat(pid);
  const v = fields[22 - 3];
  if (v === undefined || !/^\d+$/.test(v)) fail('EIO', `cannot parse the start time in /proc/${pid}/stat`);
  const startTime = BigInt(v);
  return { pid, startTime, key: `${pid}-${startTime}`, comm };
}

/** Where hotstack keeps per-process files: $HOTSTACK_STATE_DIR or /run/hotstack (read at each call). */
export function stateDir(): string {
  return process.env.HOTSTACK_STATE_DIR || '/run/hotstack';
}

/** Create the state directory (mode 0700: lock and state files are nobody else's business). */
export function ensureStateDir(): string {
  const dir = stateDir();
  try {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch (e) {
    fail(
      (e as NodeJS.ErrnoException).code === 'EACCES' ? 'EACCES' : 'EIO',
      `cannot create state directory ${dir}: ${(e as Error).message} (run as root or set HOTSTACK_STATE_DIR)`,
    );
  }
  return dir;
}

/** A held process lock; release() is idempotent and also happens when our process dies. */
export class ProcessLock {
  readonly path: string;
  readonly identity: ProcessIdentity;
  private fd: number | null;

  constructor(file: string, identity: ProcessIdentity, fd: number) {
    this.path = file;
    this.identity = identity;
    this.fd = fd;
  }

  get held(): boolean {
    return this.fd !== null;
  }

  /** Unlink, then unlock: waiters that opened the old file notice it is gone and retry on a new one. */
  release(): void {
    if (this.fd === null) return;
    try {
      fs.unlinkSync(this.path);
    } catch {
      /* already gone */
    }
    try {
      fs.closeSync(this.fd);
    } catch {
      /* ignore */
    }
    this.fd = null;
  }
}

function sameFile(fd: number, file: string): boolean {
  try {
    const a = fs.fstatSync(fd, { bigint: true });
    const b = fs.statSync(file, { bigint: true });
    return a.dev === b.dev && a.ino === b.ino;
  } catch {
    return false;
  }
}

/**
 * Take the exclusive lock for process `pid`, polling until `timeoutMs`.
 * EBUSY when another hotstack holds it, ESRCH when the process does not exist.
 */
export function lockProcess(pid: number, timeoutMs = 5000): ProcessLock {
  const id = processIdentity(pid);
  const dir = ensureStateDir();
  const file = path.join(dir, `${id.key}.lock`);
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    let fd: number;
    try {
      fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600) // libuv adds O_CLOEXEC itself;
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      fail(code === 'EACCES' ? 'EACCES' : 'EIO', `cannot open lock file ${file}: ${(e as Error).message}`);
    }
    let got = false;
    try {
      got = pt.flock(fd, pt.LOCK_EX | pt.LOCK_NB);
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
    if (got && sameFile(fd, file)) return new ProcessLock(file, id, fd);
    fs.closeSync(fd);
    if (got) continue; // we locked a file its holder had just unlinked: retry on the new one
    const left = deadline - performance.now();
    if (left <= 0) fail('EBUSY', `another hotstack is acting on process ${pid} (lock ${file})`);
    pt.sleepMs(Math.min(20, left));
  }
}
