/**
 * What /proc says about a process, one function per fact: the text formats
 * (stat, status, the task directory, map_files names) are parsed here and
 * nowhere else. Processes may exit between any two reads: each function
 * says whether it fails (ESRCH) or answers "unknown".
 */
import * as fs from 'node:fs';
import { fail } from '../../errors.js';

/** Read a /proc file of a process, turning "no such directory" into a clear ESRCH. */
export function readProcFile(pid: number, name: string): string {
  try {
    return fs.readFileSync(`/proc/${pid}/${name}`, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ESRCH') fail('ESRCH', `process ${pid} does not exist (or exited)`);
    if (code === 'EACCES' || code === 'EPERM') {
      fail('EPERM', `not permitted to read /proc/${pid}/${name}: run as root or as the process's user`);
    }
    fail('EIO', `cannot read /proc/${pid}/${name}: ${(e as Error).message}`);
  }
}

// ---------------------------------------------------------------------------
// stat

/** /proc/PID/stat split: comm, and the fields after it (`rest[0]` is field 3, the state). */
interface Stat {
  comm: string;
  rest: string[];
}

/** comm may contain spaces and parentheses: it ends at the last ')'. */
function splitStat(text: string): Stat | null {
  const open = text.indexOf('(');
  const close = text.lastIndexOf(')');
  if (open < 0 || close < 0) return null;
  return { comm: text.slice(open + 1, close), rest: text.slice(close + 2).trim().split(' ') };
}

function readStat(pid: number): Stat {
  const s = splitStat(readProcFile(pid, 'stat'));
  if (!s) fail('EIO', `cannot parse /proc/${pid}/stat`);
  return s;
}

/** Field `n` (numbered as in proc(5), from 1) of a split stat line. */
function statField(s: Stat, n: number): string | undefined {
  return s.rest[n - 3];
}

/** A numeric stat field; EIO naming `what` when it is not a number. */
function numericField(pid: number, s: Stat, n: number, what: string): bigint {
  const v = statField(s, n);
  if (v === undefined || !/^\d+$/.test(v)) fail('EIO', `cannot parse the ${what} in /proc/${pid}/stat`);
  return BigInt(v);
}

/** Start time of a process (field 22: clock ticks after boot); ESRCH when it does not exist. */
export function processStartTime(pid: number): bigint {
  return numericField(pid, readStat(pid), 22, 'start time');
}

/** Start time and command name (field 2) from one read of stat; ESRCH when the process does not exist. */
export function startTimeAndComm(pid: number): { startTime: bigint; comm: string } {
  const s = readStat(pid);
  return { startTime: numericField(pid, s, 22, 'start time'), comm: s.comm };
}

/** start_brk (field 47), or undefined on kernels that hide it; ESRCH when the process does not exist. */
export function startBrk(pid: number): bigint | undefined {
  return startBrkOf(readStat(pid));
}

function startBrkOf(s: Stat): bigint | undefined {
  const v = statField(s, 47);
  return v !== undefined && /^\d+$/.test(v) ? BigInt(v) : undefined;
}

/**
 * What opening a process needs of its stat, from one read: a fleet opens
 * a thousand processes, and the start time, the state, the name and
 * start_brk were four reads of the same file (each an open, a read the
 * kernel formats, a close).
 */
export interface StatFacts {
  /** Field 22: start time in clock ticks after boot. */
  startTime: bigint;
  /** Field 3, the main thread's one-letter scheduler state. */
  state: string;
  /** Field 2. */
  comm: string;
  /** Field 47 (fixed at exec), undefined on kernels that hide it. */
  startBrk: bigint | undefined;
  /** Field 28, where the main thread's initial stack started (fixed at exec); undefined when hidden (shown as 0). */
  startStack: bigint | undefined;
}

/** The stat facts of `pid`, one read; ESRCH when the process does not exist. */
export function statFacts(pid: number): StatFacts {
  const s = readStat(pid);
  const stack = statField(s, 28);
  return {
    startTime: numericField(pid, s, 22, 'start time'), state: statField(s, 3) ?? '?', comm: s.comm, startBrk: startBrkOf(s),
    startStack: stack !== undefined && /^\d+$/.test(stack) && stack !== '0' ? BigInt(stack) : undefined,
  };
}

/** One-letter scheduler state ('R', 'S', 'Z', 't', ...) from the stat file of a /proc directory, or '?' when gone. */
function schedStateIn(dir: string): string {
  try {
    const s = fs.readFileSync(`${dir}/stat`, 'utf8');
    return s.charAt(s.lastIndexOf(')') + 2);
  } catch {
    return '?';
  }
}

/** One-letter scheduler state of a thread ('R', 'S', 'D', 'Z', 't', ...), or '?' when gone. */
export function threadSchedState(pid: number, tid: number): string {
  return schedStateIn(`/proc/${pid}/task/${tid}`);
}

/** A thread that no longer runs: a zombie, dead, or gone from /proc. */
export function notRunning(state: string): boolean {
  return 'ZX?'.includes(state);
}

// ---------------------------------------------------------------------------
// task directory, liveness

/** Thread ids of a process; ESRCH when the process is gone. */
export function listTids(pid: number): number[] {
  try {
    return fs
      .readdirSync(`/proc/${pid}/task`)
      .map(Number)
      .filter((n) => Number.isInteger(n) && n > 0)
      .sort((a, b) => a - b);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ESRCH') fail('ESRCH', `process ${pid} exited`);
    fail('EIO', `cannot list threads of process ${pid}: ${(e as Error).message}`);
  }
}

/**
 * How many threads the kernel counts in process `pid` (its signal
 * struct's nr_threads, which /proc/PID/task shows as its link count less
 * two), or null when gone. One stat, no listing: it tells whether a
 * listing of the task directory missed threads (a thread exiting while
 * the directory is read ends the kernel's walk early, and the threads
 * after it are left out).
 */
export function threadCount(pid: number): number | null {
  try {
    const n = fs.statSync(`/proc/${pid}/task`).nlink - 2;
    return n >= 0 ? n : null;
  } catch {
    return null;
  }
}

/** Thread ids, or null when the task directory cannot be read (gone). */
function tidsOrNull(pid: number): number[] | null {
  try {
    return listTids(pid);
  } catch {
    return null;
  }
}

/** True when /proc shows process `pid` (alive, a zombie, or not yet reaped). */
export function procExists(pid: number): boolean {
  return fs.existsSync(`/proc/${pid}`);
}

/** True when /proc still lists thread `tid` of `pid`. */
export function threadListed(pid: number, tid: number): boolean {
  return fs.existsSync(`/proc/${pid}/task/${tid}`);
}

/**
 * True when process `pid` no longer runs: /proc has no such process, or it
 * is a zombie (every thread Z or X) waiting for its parent to reap it.
 * /proc/PID exists for a zombie, so existence alone would count it alive.
 * `state`: the main thread's, when just read with other facts (statFacts).
 */
export function processDead(pid: number, state = schedStateIn(`/proc/${pid}`)): boolean {
  if (!notRunning(state)) return false;
  const tids = tidsOrNull(pid);
  if (tids === null) return true;
  return tids.every((tid) => notRunning(threadSchedState(pid, tid)));
}

/**
 * The /proc directory to read a process's address space from: /proc/PID,
 * or /proc/PID/task/TID of a live thread when the thread-group leader has
 * called pthread_exit (a zombie leader's maps, mem and map_files are empty
 * although the process runs on).
 */
export function procBase(pid: number): string {
  const base = `/proc/${pid}`;
  if (schedStateIn(base) !== 'Z') return base;
  for (const tid of tidsOrNull(pid) ?? []) {
    if (!notRunning(threadSchedState(pid, tid))) return `${base}/task/${tid}`;
  }
  return base;
}

/** Every process id in /proc but ours (readdir of /proc lists thread-group leaders only). */
export function allPids(): number[] {
  const out: number[] = [];
  for (const n of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(n)) continue;
    const pid = Number(n);
    if (pid !== process.pid) out.push(pid);
  }
  return out.sort((a, b) => a - b);
}

// ---------------------------------------------------------------------------
// comm, exe, status

/** /proc/PID/task/TID/comm (the process's own with `tid` omitted), or null when gone or unreadable. */
export function readComm(pid: number, tid?: number): string | null {
  try {
    return fs.readFileSync(tid === undefined ? `/proc/${pid}/comm` : `/proc/${pid}/task/${tid}/comm`, 'utf8').trim();
  } catch {
    return null;
  }
}

/** The text of the /proc/PID/exe link (with " (deleted)" as the kernel prints it); throws when unreadable. */
export function exeLink(pid: number): string {
  return fs.readlinkSync(`/proc/${pid}/exe`);
}

/** Device and inode of the executable /proc/PID/exe opens (the running one, even if replaced); throws when unreadable. */
export function exeFile(pid: number): fs.Stats {
  return fs.statSync(`/proc/${pid}/exe`);
}

/** /proc/PID/status (of thread `tid` when given); throws (the fs error) when unreadable. */
export function readStatus(pid: number, tid?: number): string {
  return fs.readFileSync(tid === undefined ? `/proc/${pid}/status` : `/proc/${pid}/task/${tid}/status`, 'utf8');
}

/** The whitespace-separated values of `name:` in a status text, or undefined when absent. */
function statusValues(status: string, name: string): string[] | undefined {
  const m = new RegExp(`^${name}:[ \\t]*(.*)$`, 'm').exec(status);
  return m ? m[1]!.trim().split(/\s+/) : undefined;
}

function statusNumber(status: string, name: string, index = 0): number | null {
  const v = statusValues(status, name)?.[index];
  return v !== undefined && /^\d+$/.test(v) ? Number(v) : null;
}

/** `Tgid:`: the process a thread belongs to. */
export function threadGroupOf(status: string): number | null {
  return statusNumber(status, 'Tgid');
}

/**
 * EINVAL when `status` (of /proc/`pid`/status) is a thread's that is not
 * its process's leader: /proc/TID answers for any thread id, so a thread
 * id given as a pid would otherwise be taken for a process.
 */
export function checkLeaderStatus(pid: number, status: string): void {
  const tgid = threadGroupOf(status) ?? pid;
  if (tgid !== pid) fail('EINVAL', `${pid} is a thread of process ${tgid}, not a process id: use ${tgid}`);
}

/** `Uid:` second value: the effective user id. */
export function effectiveUidOf(status: string): number | null {
  return statusNumber(status, 'Uid', 1);
}

/** `TracerPid:`: who traces the thread (0: nobody). */
export function tracerOf(status: string): number | null {
  return statusNumber(status, 'TracerPid');
}

/** A signal mask of a status text (`SigBlk:` etc., hex; bit n-1 is signal n), or null when absent or malformed. */
function statusMask(status: string, name: string): bigint | null {
  const v = statusValues(status, name)?.[0];
  return v !== undefined && /^[0-9a-f]{1,16}$/.test(v) ? BigInt('0x' + v) : null;
}

/** A thread's blocked, ignored and caught signals (`SigBlk:`, `SigIgn:`, `SigCgt:`), or null when any is missing. */
export function signalMasksOf(status: string): { blocked: bigint; ignored: bigint; caught: bigint } | null {
  const blocked = statusMask(status, 'SigBlk');
  const ignored = statusMask(status, 'SigIgn');
  const caught = statusMask(status, 'SigCgt');
  return blocked === null || ignored === null || caught === null ? null : { blocked, ignored, caught };
}

/** `Seccomp:` 2: a seccomp filter is installed. */
export function hasSeccompFilter(status: string): boolean {
  return statusNumber(status, 'Seccomp') === 2;
}

/**
 * The process's pid in its own PID namespace: the last value of `NSpid:`
 * (the values run from the namespace of this /proc's mount inward).
 * Without NSpid (kernels before 4.1) the pid as seen here.
 */
export function innermostPidOf(status: string, pid: number): number {
  const v = statusValues(status, 'NSpid');
  const last = v?.[v.length - 1];
  return last !== undefined && /^\d+$/.test(last) ? Number(last) : pid;
}

/** Inode of the process's PID namespace (/proc/PID/ns/pid): the same from every namespace; ESRCH when gone. */
export function pidNamespaceOf(pid: number): bigint {
  try {
    return fs.statSync(`/proc/${pid}/ns/pid`, { bigint: true }).ino;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ESRCH') fail('ESRCH', `process ${pid} does not exist (or exited)`);
    fail('EIO', `cannot read the PID namespace of process ${pid}: ${(e as Error).message}`);
  }
}

/** RLIMIT_STACK (soft) of a process from /proc/PID/limits (2^64-1 when unlimited), or undefined when unknown. */
export function readStackLimit(pid: number): bigint | undefined {
  const m = /^Max stack size\s+(\S+)/m.exec(readProcFile(pid, 'limits'));
  if (!m) return undefined;
  return m[1] === 'unlimited' ? (1n << 64n) - 1n : BigInt(m[1]!);
}

// ---------------------------------------------------------------------------
// maps, map_files

/**
 * The text of a process's maps and the /proc directory it came from (the
 * base for its map_files, see procBase); ESRCH, EPERM or EIO as
 * readProcFile. The leader's own file is read first: only when it is empty
 * (a zombie, or a leader that called pthread_exit) is a live thread's used.
 */
export function readMapsText(pid: number): { text: string; base: string } {
  const own = `/proc/${pid}`;
  const text = readProcFile(pid, 'maps');
  if (text !== '') return { text, base: own };
  const base = procBase(pid);
  if (base === own) return { text, base };
  return { text: readProcFile(pid, `${base.slice(own.length + 1)}/maps`), base };
}


/**
 * `base`/map_files/START-END for the mapping [start, end): opens the very
 * inode that is mapped. The names are unpadded hex, unlike maps itself.
 */
export function mapFilesPath(base: string, start: bigint, end: bigint): string {
  return `${base}/map_files/${start.toString(16)}-${end.toString(16)}`;
}
