/**
 * Thin, synchronous bindings to the libc calls the process target needs
 * (ptrace, waitpid, flock, tgkill), through koffi.
 *
 * Everything here is per *thread* (Linux tid): ptrace acts on tasks, not
 * processes. All failures become HotstackError with the errno name the
 * kernel gave, and a message a person can act on.
 *
 * Hazard for callers embedding this in a Node program that spawned the
 * target itself: libuv reaps its own children with waitpid(pid, WNOHANG) when
 * SIGCHLD arrives, and that call also consumes ptrace-stop notifications of
 * the thread-group leader (and reports them as a bogus 'exit' event). Keep
 * every window in which a traced thread may run (between a restart and the
 * wait for its next stop) inside synchronous code, as this module does.
 */
import { arch, type Regs } from '../../arch/index.js';
import koffi from 'koffi';
import { ERRNO, errnoName, fail, knownErrno, type ErrnoName } from '../../errors.js';

// ---------------------------------------------------------------------------
// libc

const libc = koffi.load('libc.so.6');

/** glibc declares ptrace variadic; call it that way so %al is set correctly. */
const c_ptrace = libc.func('long ptrace(int request, int pid, ...)');
const c_waitpid = libc.func('int waitpid(int pid, void *status, int options)');
const c_flock = libc.func('int flock(int fd, int operation)');
const c_tgkill = libc.func('int tgkill(int tgid, int tid, int sig)');
const c_sched_yield = libc.func('int sched_yield(void)');
const c_prctl = libc.func('int prctl(int option, unsigned long arg2, unsigned long arg3, unsigned long arg4, unsigned long arg5)');
const PR_SET_TIMERSLACK = 29;
// waitFor's short sleeps wake on time instead of up to 50 us late (the default
// slack), while a target may be stopped: per thread, so each worker's load sets its own.
c_prctl(PR_SET_TIMERSLACK, 1000, 0, 0, 0);
const c_pwrite = libc.func('long pwrite64(int fd, const void *buf, size_t count, int64_t offset)');
const c_prlimit = libc.func('int prlimit(int pid, int resource, void *new_limit, void *old_limit)');

// ---------------------------------------------------------------------------
// constants

export const PTRACE_CONT = 7;
export const PTRACE_SYSCALL = 24;
export const PTRACE_SETOPTIONS = 0x4200;
export const PTRACE_SINGLESTEP = 9;
export const PTRACE_GETREGS = 12;
export const PTRACE_SETREGS = 13;
export const PTRACE_DETACH = 17;
export const PTRACE_GETSIGINFO = 0x4202;
export const PTRACE_SETSIGINFO = 0x4203;
export const PTRACE_SEIZE = 0x4206;
export const PTRACE_INTERRUPT = 0x4207;
export const PTRACE_LISTEN = 0x4208;
export const PTRACE_EVENT_STOP = 128;

const WNOHANG = 1;
const __WALL = 0x40000000;

export const LOCK_EX = 2;
export const LOCK_NB = 4;

/** Signal numbers (x86-64 Linux) used by the process layer. */
export const SIG = {
  SIGHUP: 1,
  SIGINT: 2,
  SIGQUIT: 3,
  SIGILL: 4,
  SIGTRAP: 5,
  SIGABRT: 6,
  SIGBUS: 7,
  SIGFPE: 8,
  SIGKILL: 9,
  SIGUSR1: 10,
  SIGSEGV: 11,
  SIGUSR2: 12,
  SIGPIPE: 13,
  SIGALRM: 14,
  SIGTERM: 15,
  SIGSTKFLT: 16,
  SIGCHLD: 17,
  SIGCONT: 18,
  SIGSTOP: 19,
  SIGTSTP: 20,
  SIGTTIN: 21,
  SIGTTOU: 22,
  SIGURG: 23,
  SIGXCPU: 24,
  SIGXFSZ: 25,
  SIGVTALRM: 26,
  SIGPROF: 27,
  SIGWINCH: 28,
  SIGIO: 29,
  SIGPWR: 30,
  SIGSYS: 31,
} as const;

const SIG_NAMES = new Map<number, string>(Object.entries(SIG).map(([k, v]) => [v, k]));

/** "SIGSEGV" for 11, "SIGRT5" for realtime ones, "signal N" otherwise. */
export function signalName(sig: number): string {
  const n = SIG_NAMES.get(sig);
  if (n) return n;
  if (sig >= 32 && sig <= 64) return `SIGRT${sig - 32}`;
  return `signal ${sig}`;
}

// ---------------------------------------------------------------------------
// errors

/** errno names the kernel may give us that are not in the shared ERRNO table map to EIO, keeping the number in the text. */
function errnoKey(e: number): ErrnoName {
  return knownErrno(e) ?? 'EIO';
}

const OP_NAMES: Record<number, string> = {
  [PTRACE_CONT]: 'PTRACE_CONT',
  [PTRACE_SINGLESTEP]: 'PTRACE_SINGLESTEP',
  [PTRACE_GETREGS]: 'PTRACE_GETREGS',
  [PTRACE_SETREGS]: 'PTRACE_SETREGS',
  [PTRACE_DETACH]: 'PTRACE_DETACH',
  [PTRACE_GETSIGINFO]: 'PTRACE_GETSIGINFO',
  [PTRACE_SETSIGINFO]: 'PTRACE_SETSIGINFO',
  [PTRACE_SEIZE]: 'PTRACE_SEIZE',
  [PTRACE_INTERRUPT]: 'PTRACE_INTERRUPT',
  [PTRACE_LISTEN]: 'PTRACE_LISTEN',
  [PTRACE_SYSCALL]: 'PTRACE_SYSCALL',
  [PTRACE_SETOPTIONS]: 'PTRACE_SETOPTIONS',
};

/** The EPERM text: the three usual causes, so a person knows what to check. */
export function notPermitted(pid: number): string {
  return (
    `not permitted to trace process ${pid}: run as root, or check /proc/sys/kernel/yama/ptrace_scope, ` +
    `or another tracer (gdb, strace, another hotstack) is attached`
  );
}

function ptraceFailure(op: number, tid: number, e: number): never {
  const opName = OP_NAMES[op] ?? `ptrace request ${op}`;
  if (e === ERRNO.EPERM) fail('EPERM', notPermitted(tid));
  if (e === ERRNO.ESRCH) {
    fail('ESRCH', `thread ${tid} does not exist or is not stopped under hotstack's control (${opName})`);
  }
  fail(errnoKey(e), `${opName} on thread ${tid} failed: ${errnoName(e)}`);
}

function call(op: number, tid: number, addr: bigint, data: bigint | Buffer): void {
  const r =
    typeof data === 'bigint'
      ? c_ptrace(op, tid, 'uint64_t', addr, 'uint64_t', data)
      : c_ptrace(op, tid, 'uint64_t', addr, 'void *', data);
  // koffi.errno() is only meaningful after a failure: it is not cleared on success.
  if (Number(r) === -1) ptraceFailure(op, tid, koffi.errno());
}

// ---------------------------------------------------------------------------
// requests

/**
 * Attach without stopping the thread and without sending SIGSTOP, so no stray
 * stop can be left behind if we die. No options: EXITKILL would kill the
 * target with us, the opposite of what a live patcher wants.
 */
export function seize(tid: number, options = 0): void {
  call(PTRACE_SEIZE, tid, 0n, BigInt(options));
}

/** Ask a seized thread to enter a PTRACE_EVENT_STOP at its next chance (interrupting blocking syscalls, which restart later). */
export function interrupt(tid: number): void {
  call(PTRACE_INTERRUPT, tid, 0n, 0n);
}

/** Restart a stopped thread; `sig` is delivered only when restarting from a signal-delivery-stop. */
export function cont(tid: number, sig = 0): void {
  call(PTRACE_CONT, tid, 0n, BigInt(sig));
}

/** Resume until the next system-call entry or exit (or signal) stop. */
export function syscallStep(tid: number, sig = 0): void {
  call(PTRACE_SYSCALL, tid, 0n, BigInt(sig));
}

/** Set ptrace options (PTRACE_O_*) of a stopped tracee. */
export function setOptions(tid: number, options: number): void {
  call(PTRACE_SETOPTIONS, tid, 0n, BigInt(options));
}

/** Syscall stops report SIGTRAP|0x80, telling them from real SIGTRAPs. */
export const PTRACE_O_TRACESYSGOOD = 1;

/** Execute exactly one instruction, then stop with SIGTRAP. */
export function singlestep(tid: number, sig = 0): void {
  call(PTRACE_SINGLESTEP, tid, 0n, BigInt(sig));
}

/** Keep a thread that is in a group-stop stopped, but let it report the end of the stop (for SIGSTOPped targets). */
export function listen(tid: number): void {
  call(PTRACE_LISTEN, tid, 0n, 0n);
}

/** Stop tracing a (stopped) thread; `sig` is delivered only from a signal-delivery-stop. */
export function detach(tid: number, sig = 0): void {
  call(PTRACE_DETACH, tid, 0n, BigInt(sig));
}

/** sizeof(siginfo_t) on Linux. */
export const SIGINFO_SIZE = 128;

/** Raw siginfo of the signal a thread is stopped for: kept so a re-injected signal carries its original sender and code. */
export function getSiginfo(tid: number): Buffer {
  const b = Buffer.alloc(SIGINFO_SIZE);
  call(PTRACE_GETSIGINFO, tid, 0n, b);
  return b;
}

/** Replace the siginfo of the signal about to be delivered (signal-delivery-stop only). */
export function setSiginfo(tid: number, info: Buffer): void {
  call(PTRACE_SETSIGINFO, tid, 0n, info);
}

// ---------------------------------------------------------------------------
// registers

export type { Regs, RegName } from '../../arch/index.js';

const REG_NAMES = arch.process.regNames;
const REGS_SIZE = REG_NAMES.length * 8;

/**
 * One register buffer for every GETREGS/SETREGS of this thread (the layer
 * is synchronous): a fresh ArrayBuffer per call was garbage on the path a
 * fleet runs several times per process.
 */
const regsBuf = Buffer.alloc(REGS_SIZE);
const regsView = new BigUint64Array(regsBuf.buffer, regsBuf.byteOffset, REG_NAMES.length);

/** All general registers of a stopped thread. */
export function getRegs(tid: number): Regs {
  call(PTRACE_GETREGS, tid, 0n, regsBuf);
  // A typed view: this runs for every thread inside the stop, often before the JIT warms up.
  const r = {} as Regs;
  for (let i = 0; i < REG_NAMES.length; i++) r[REG_NAMES[i]!] = regsView[i]!;
  return r;
}

/** Set all general registers of a stopped thread (values are taken modulo 2^64, so -1n works for orig_rax). */
export function setRegs(tid: number, regs: Regs): void {
  for (let i = 0; i < REG_NAMES.length; i++) regsView[i] = BigInt.asUintN(64, regs[REG_NAMES[i]!]);
  call(PTRACE_SETREGS, tid, 0n, regsBuf);
}

// ---------------------------------------------------------------------------
// waiting

/** What waitpid told us about a traced thread. */
export type WaitStatus =
  /** The thread exited (its exit code; for a whole process the exit_group code). */
  | { kind: 'exited'; code: number }
  /** The thread was killed by a signal. */
  | { kind: 'killed'; signal: number }
  /** Signal-delivery-stop: `signal` is about to be delivered; restart with it to deliver, 0 to suppress. */
  | { kind: 'signal'; signal: number }
  /**
   * PTRACE_EVENT_STOP: our PTRACE_INTERRUPT (signal SIGTRAP) or a group-stop
   * (signal SIGSTOP/SIGTSTP/SIGTTIN/SIGTTOU) of a seized thread.
   */
  | { kind: 'event-stop'; signal: number; groupStop: boolean }
  /** Any other ptrace event stop (only with options we never set). */
  | { kind: 'event'; event: number; signal: number };

/** Decode a raw waitpid status word (exported for tests). */
export function decodeStatus(status: number): WaitStatus {
  const low = status & 0x7f;
  if (low === 0) return { kind: 'exited', code: (status >> 8) & 0xff };
  if ((status & 0xff) === 0x7f) {
    const sig = (status >> 8) & 0xff;
    const event = (status >> 16) & 0xff;
    if (event === 0) return { kind: 'signal', signal: sig };
    if (event === PTRACE_EVENT_STOP) {
      const groupStop =
        sig === SIG.SIGSTOP || sig === SIG.SIGTSTP || sig === SIG.SIGTTIN || sig === SIG.SIGTTOU;
      return { kind: 'event-stop', signal: sig, groupStop };
    }
    return { kind: 'event', event, signal: sig };
  }
  return { kind: 'killed', signal: low };
}

const sleepCell = new Int32Array(new SharedArrayBuffer(4));

/** Synchronous sleep: the whole layer is synchronous so the event loop (and libuv's waitpid) never runs while a traced thread might report. */
export function sleepMs(ms: number): void {
  if (ms > 0) Atomics.wait(sleepCell, 0, 0, ms);
}

const waitBuf = Buffer.alloc(4);

/** One non-blocking waitpid for `tid`: null when it has nothing to report. */
export function pollWait(tid: number): WaitStatus | null {
  // Reused: a wait spins through many polls, each a fresh Buffer before (see regsBuf).
  const st = waitBuf;
  for (;;) {
    const r = c_waitpid(tid, st, __WALL | WNOHANG) as number;
    if (r === 0) return null;
    if (r === tid) return decodeStatus(st.readInt32LE(0));
    const e = koffi.errno();
    if (r === -1 && e === 4 /* EINTR */) continue;
    if (r === -1 && e === 10 /* ECHILD */) {
      fail('ESRCH', `thread ${tid} is gone or not traced by hotstack (waitpid: ECHILD)`);
    }
    fail('EIO', `waitpid(${tid}) failed: ${errnoName(e)}`);
  }
}

/** How long waitFor naps 20 us at a time before the naps double. */
const SHORT_NAPS_MS = 2;
/**
 * How long waitFor polls without sleeping: interrupt stops and short
 * remote syscalls end within it, and on a fleet's busy CPUs a woken target
 * often waits its turn longer than 0.25 ms (the spin before): a fleet of
 * 1000 went faster with 1 ms in 7 of 8 interleaved pairs (about 3%), and
 * the napping that followed had cost a futex wait and wake-up per nap.
 */
const SPIN_MS = 1;

/**
 * Wait until `tid` reports a state change, polling (no blocking waitpid, so
 * a timeout is possible). Returns null when nothing happened within
 * `timeoutMs`. Polls without sleeping (yielding the CPU) for the first SPIN_MS (a sleep costs
 * a futex wait and a wake-up, and the target is stopped meanwhile), then
 * naps 20 us at a time (our timer slack is 1 us) for SHORT_NAPS_MS, then
 * doubling up to 2 ms, so a long wait stays cheap.
 */
export function waitFor(tid: number, timeoutMs: number): WaitStatus | null {
  const start = performance.now();
  const deadline = start + timeoutMs;
  let delay = 0.02;
  for (;;) {
    const s = pollWait(tid);
    if (s) return s;
    const now = performance.now();
    const left = deadline - now;
    if (left <= 0) return null;
    if (now - start < SPIN_MS) {
      // Spinning, let the traced thread have this CPU if it waits for one (a fleet keeps both busy).
      c_sched_yield();
      continue;
    }
    sleepMs(Math.min(delay, left));
    // Short naps while a stop is still likely soon (a woken target's thread takes a few
    // hundred microseconds on a busy machine), longer ones past that so a long wait stays cheap.
    if (now - start > SHORT_NAPS_MS) delay = Math.min(delay * 2, 2);
  }
}

// ---------------------------------------------------------------------------
// signals and locks

/** Queue `sig` for one thread (used to re-inject signals we had to take out of the kernel's queue). */
export function tgkill(tgid: number, tid: number, sig: number): void {
  if (c_tgkill(tgid, tid, sig) === -1) {
    const e = koffi.errno();
    if (e === ERRNO.ESRCH) fail('ESRCH', `thread ${tid} of process ${tgid} exited`);
    fail(errnoKey(e), `tgkill(${tgid}, ${tid}, ${signalName(sig)}) failed: ${errnoName(e)}`);
  }
}

/** flock on a Node fd: true on success, false when LOCK_NB and the lock is held elsewhere. */
export function flock(fd: number, operation: number): boolean {
  for (;;) {
    if (c_flock(fd, operation) === 0) return true;
    const e = koffi.errno();
    if (e === 4 /* EINTR */) continue;
    if (e === ERRNO.EAGAIN) return false;
    fail(errnoKey(e), `flock failed: ${errnoName(e)}`);
  }
}

const RLIMIT_STACK = 3;
const rlimitBuf = Buffer.alloc(16);

/**
 * RLIMIT_STACK (soft) of process `pid` (2^64-1 when unlimited), or
 * undefined when prlimit refuses (another user's process without
 * CAP_SYS_RESOURCE): one system call where /proc/PID/limits is a file
 * of sixteen lines to open, read and parse.
 */
export function stackLimitOf(pid: number): bigint | undefined {
  if (c_prlimit(pid, RLIMIT_STACK, null, rlimitBuf) !== 0) return undefined;
  return rlimitBuf.readBigUInt64LE(0);
}

/**
 * pwrite with a 64-bit offset: fs.writeSync only takes number positions
 * (a bigint one is silently treated as "current offset"), which cannot
 * name /proc/PID/mem addresses above 2^53 (5-level paging). Returns the
 * count written, or the errno name.
 */
export function pwrite(fd: number, data: Uint8Array, offset: bigint): number | string {
  for (;;) {
    const r = Number(c_pwrite(fd, data, data.length, offset));
    if (r >= 0) return r;
    const e = koffi.errno();
    if (e !== 4 /* EINTR */) return errnoName(e);
  }
}
