/**
 * One hotstack at a time per process: an flock on a file in the state
 * directory named after the process as every PID namespace sees it (see
 * lockName). flock locks die with the file descriptor, so a hotstack killed
 * with SIGKILL never leaves one held.
 */
import * as fs from 'node:fs';
import { fail } from '../../errors.js';
import * as pt from './ptrace.js';
import { checkLeaderStatus, innermostPidOf, pidNamespaceOf, readComm, readProcFile, startTimeAndComm, type StatFacts } from './procfs.js';
import { StateDir } from './statedir.js';

export { stateDir } from './statedir.js';

/** Who a process is, in a way that survives pid reuse. */
export interface ProcessIdentity {
  pid: number;
  /** Field 22 of /proc/PID/stat: start time in clock ticks after boot. */
  startTime: bigint;
  /** `${pid}-${startTime}`: names the state file (the lock is named for every PID namespace alike, see lockName). */
  key: string;
  /** Command name (field 2 of /proc/PID/stat), for messages. */
  comm: string;
}

/** pid, start time and name of a process (from `known` when just read); ESRCH when it does not exist. */
export function processIdentity(pid: number, known?: StatFacts): ProcessIdentity {
  if (!Number.isInteger(pid) || pid <= 0) fail('EINVAL', `invalid process id ${pid}`);
  const { startTime, comm } = known ?? startTimeAndComm(pid);
  return { pid, startTime, key: `${pid}-${startTime}`, comm };
}

/** A held process lock; release() is idempotent and also happens when our process dies. */
export class ProcessLock {
  /** The lock file, for messages. */
  readonly path: string;
  readonly identity: ProcessIdentity;
  private fd: number | null;
  /** The same file, reached through the open state directory. */
  private readonly at: string;

  constructor(file: string, at: string, identity: ProcessIdentity, fd: number) {
    this.path = file;
    this.at = at;
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
      fs.unlinkSync(this.at);
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
    const b = fs.lstatSync(file, { bigint: true });
    return a.dev === b.dev && a.ino === b.ino;
  } catch {
    return false;
  }
}

/**
 * The lock file's name for process `pid`: its PID namespace's inode and its
 * pid in that namespace (the last NSpid value), e.g. `pidns4026531836-pid812.lock`.
 * The state lives in the process, which any PID namespace can reach, so
 * the lock must be the same file for every observer sharing the state
 * directory: a pid as seen by this hotstack, or the start time (shifted by
 * time namespaces), would give a host and a container two different locks
 * for one process. A recycled pid gets the same name, which costs nothing:
 * a dead process's lock is not held.
 */
function lockName(pid: number): string {
  const ns = pidNamespaceOf(pid);
  const status = readProcFile(pid, 'status');
  // A thread id is no process to lock (and the target's stops rely on this check).
  checkLeaderStatus(pid, status);
  const inner = innermostPidOf(status, pid);
  return `pidns${ns}-pid${inner}.lock`;
}

let ownNamespace: bigint | null | undefined;

/** Our own PID namespace (hotstack never changes it: read once), or null when unknown. */
function ownPidNamespace(): bigint | null {
  if (ownNamespace === undefined) {
    try {
      ownNamespace = pidNamespaceOf(process.pid);
    } catch {
      ownNamespace = null;
    }
  }
  return ownNamespace;
}

/** Who holds a lock, as its holder wrote it (its pid and PID namespace), for messages; '' when unknown. */
function holderOf(fd: number): string {
  try {
    const b = Buffer.alloc(64);
    const n = fs.readSync(fd, b, 0, b.length, 0);
    const m = /^(\d+)\n(?:(\d+)\n)?/.exec(b.subarray(0, n).toString('latin1'));
    if (!m) return '';
    const pid = m[1]!;
    // A pid from another PID namespace names some other process here.
    if (m[2] !== undefined && BigInt(m[2]) !== ownPidNamespace()) return ` by pid ${pid} of another PID namespace (pidns ${m[2]})`;
    const comm = readComm(Number(pid)) ?? '';
    return ` by pid ${pid}${comm ? ` (${comm})` : ''}`;
  } catch {
    return '';
  }
}

/** Note our pid and PID namespace in the lock file, so that a waiter can name who holds it. */
function noteHolder(fd: number): void {
  try {
    fs.ftruncateSync(fd, 0);
    fs.writeSync(fd, `${process.pid}\n${ownPidNamespace() ?? ''}\n`, 0);
  } catch {
    /* only a courtesy to waiters */
  }
}

/**
 * Take the exclusive lock for process `pid`, polling until `timeoutMs`.
 * EBUSY when another hotstack holds it (naming it), ESRCH when the process
 * does not exist. The lock file is checked like every file of the state
 * directory (no symbolic link, regular, ours). `known`: the process's stat
 * facts, when the caller has just read them.
 */
export function lockProcess(pid: number, timeoutMs = 5000, known?: StatFacts): ProcessLock {
  const id = processIdentity(pid, known);
  const dir = StateDir.open();
  const name = lockName(pid);
  const file = dir.shown(name);
  const at = dir.at(name);
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const fd = dir.openLockFile(name); // libuv adds O_CLOEXEC itself
    let got = false;
    try {
      got = pt.flock(fd, pt.LOCK_EX | pt.LOCK_NB);
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
    if (got && sameFile(fd, at)) {
      noteHolder(fd);
      return new ProcessLock(file, at, id, fd);
    }
    if (got) {
      fs.closeSync(fd);
      continue; // we locked a file its holder had just unlinked: retry on the new one
    }
    const left = deadline - performance.now();
    if (left <= 0) {
      const who = holderOf(fd);
      fs.closeSync(fd);
      fail('EBUSY', `another hotstack is acting on process ${pid}${who} (lock ${file}); try again when it is done`);
    }
    fs.closeSync(fd);
    pt.sleepMs(Math.min(20, left));
  }
}
