/**
 * The one loop that runs a stopped thread of ours until an operation is
 * done: it owns the deadline, getting a stuck thread back (reclaim), a
 * process that dies meanwhile (ESRCH at once), signals that arrive on the
 * way (owed to the thread), and restoring the thread's registers.
 */
import { fail, isHotstackError } from '../../../errors.js';
import { arch, type Regs } from '../../../arch/index.js';
import { testMode } from '../../../core/fault.js';
import * as pt from '../ptrace.js';
import { leaderLeftEarly, type StoppedProcess } from '../threads.js';

/** How long a remote system call may take (a hook has its own timeout). */
export const SYSCALL_TIMEOUT_MS = 5000;
/** Stop signal of a syscall stop with PTRACE_O_TRACESYSGOOD. */
export const SYSCALL_TRAP = pt.SIG.SIGTRAP | 0x80;

export const hex = (a: bigint): string => '0x' + a.toString(16);

/** Register arguments as 64-bit values; EINVAL past six (`what` says which operation refused them). */
export function registerArgs(args: (number | bigint)[], what: string): bigint[] {
  if (args.length > 6) fail('EINVAL', `${what} at most 6 register arguments, got ${args.length}`);
  return args.map((v) => BigInt.asUintN(64, BigInt(v)));
}

/**
 * Test hook: HOTSTACK_TEST_DIE_AT=<stage> makes this process SIGKILL itself
 * there (tests of a killed hotstack); only with HOTSTACK_TEST_MODE=1 too.
 */
export function dieAt(stage: string): void {
  if (process.env.HOTSTACK_TEST_DIE_AT === stage && testMode()) process.kill(process.pid, 'SIGKILL');
}

const CRASH_SIGNALS: ReadonlySet<number> = new Set([
  pt.SIG.SIGSEGV, pt.SIG.SIGBUS, pt.SIG.SIGILL, pt.SIG.SIGFPE, pt.SIG.SIGABRT, pt.SIG.SIGSYS, pt.SIG.SIGTRAP,
]);

/** Signals that mean the code we made the thread run crashed. */
export function isCrashSignal(sig: number): boolean {
  return CRASH_SIGNALS.has(sig);
}

/** The siginfo of the signal `tid` is stopped for, null when it cannot be read. */
export function siginfoOrNull(tid: number): Buffer | null {
  try {
    return pt.getSiginfo(tid);
  } catch {
    return null;
  }
}

/** Owe the signal `tid` is stopped for to the thread: it gets it on resume or detach. */
export function owe(proc: StoppedProcess, tid: number, signal: number): void {
  proc.owe(tid, signal, siginfoOrNull(tid));
}

function exitedDuring(proc: StoppedProcess, tid: number, what: string): never {
  proc.noteExit(tid);
  fail('ESRCH', `process ${proc.pid} exited during ${what}`);
}

/**
 * waitFor until `deadline`, noticing a process that died meanwhile (killed
 * by someone else, or exiting on its own as a zombie whose exit is not
 * reported to us) at once as ESRCH, instead of after the whole timeout.
 * An exit reported by waitpid is ESRCH too.
 */
function waitAlive(proc: StoppedProcess, tid: number, deadline: number, what: string): pt.WaitStatus | null {
  for (;;) {
    const left = deadline - performance.now();
    const st = pt.waitFor(tid, Math.max(0, Math.min(left, 100)));
    if (st && (st.kind === 'exited' || st.kind === 'killed')) exitedDuring(proc, tid, what);
    if (st || left <= 100) return st;
    if (proc.isGone()) exitedDuring(proc, tid, what);
  }
}

/**
 * After a timeout, get the thread back under control: interrupt it and wait
 * for the stop; signals met on the way are owed to it. A thread that called
 * pthread_exit meanwhile (a zombie leader's exit is not reported until the
 * whole group exits) is reported as ESRCH instead of hanging.
 */
function reclaim(proc: StoppedProcess, tid: number, what: string): void {
  const zombie = (): boolean => tid === proc.pid && leaderLeftEarly(proc.pid);
  const threadExited = (): never => {
    proc.markGone(tid);
    fail('ESRCH', `thread ${tid} of process ${proc.pid} exited during ${what}`);
  };
  if (zombie()) threadExited();
  try {
    pt.interrupt(tid);
  } catch {
    return;
  }
  const deadline = performance.now() + SYSCALL_TIMEOUT_MS;
  for (;;) {
    const left = deadline - performance.now();
    if (left <= 0) fail('ETIMEDOUT', `thread ${tid} of process ${proc.pid} did not stop after an interrupt`);
    const st = pt.waitFor(tid, Math.min(left, 50));
    if (!st) {
      if (zombie()) threadExited();
      continue;
    }
    if (st.kind === 'exited' || st.kind === 'killed') exitedDuring(proc, tid, what);
    if (st.kind === 'event-stop') return;
    if (st.kind === 'signal' && st.signal === SYSCALL_TRAP) {
      // A syscall stop (PTRACE_SYSCALL of a stub operation) consumed the pending interrupt: ask again.
      pt.interrupt(tid);
    } else if (st.kind === 'signal' && !isCrashSignal(st.signal)) owe(proc, tid, st.signal);
    pt.cont(tid, 0);
  }
}

/** A stop the operation decides about: a signal or syscall stop, or an event stop; exits never get here. */
export type Stop = Exclude<pt.WaitStatus, { kind: 'exited' } | { kind: 'killed' }>;

/** How to resume the thread between stops: to the next syscall stop, freely, one instruction, or into an interrupt stop. */
export type Resume = 'syscall' | 'cont' | 'step' | 'interrupt';

/** One remote operation for `drive`. */
export interface Operation<T> {
  /** What runs, for messages ("remote system call 9", "the hook at 0x..."). */
  what: string;
  resume: Resume;
  timeoutMs: number;
  /** The ETIMEDOUT message when the operation does not end in time. */
  timeoutMessage: string;
  /** Test-kill stage right after the registers are set (see dieAt). */
  stage?: string;
  /**
   * Called at every stop with the thread's registers: a value ends the
   * operation, undefined resumes the thread. `deadline` is the operation's.
   */
  onStop(st: Stop, regs: Regs, deadline: number): T | undefined;
}

/**
 * The loop every remote operation runs in: resume, wait (a process that
 * dies is ESRCH at once), let `op` decide, until it returns a value or the
 * deadline passes (the thread is then reclaimed and ETIMEDOUT thrown).
 */
function runUntil<T>(proc: StoppedProcess, tid: number, op: Omit<Operation<T>, 'timeoutMs' | 'stage'>, deadline: number): T {
  for (;;) {
    resume(tid, op.resume);
    const st = waitAlive(proc, tid, deadline, op.what);
    if (!st) {
      reclaim(proc, tid, op.what);
      fail('ETIMEDOUT', op.timeoutMessage);
    }
    const done = op.onStop(st as Stop, pt.getRegs(tid), deadline);
    if (done !== undefined) return done;
  }
}

/**
 * Set `regs` on stopped thread `tid` and run it until `op.onStop` returns a
 * value; the thread's registers are `saved` again afterwards, whatever
 * happened (unless it is gone). A process that dies meanwhile is ESRCH.
 */
export function drive<T>(proc: StoppedProcess, tid: number, saved: Regs, regs: Regs, op: Operation<T>): T {
  pt.setRegs(tid, regs);
  if (op.stage) dieAt(op.stage);
  try {
    return runUntil(proc, tid, op, performance.now() + op.timeoutMs);
  } finally {
    restore(tid, saved);
  }
}

/** Run `body`; any failure of a process that died under us becomes ESRCH "process N exited". */
export function exitAware<T>(proc: StoppedProcess, body: () => T): T {
  try {
    return body();
  } catch (e) {
    // Whatever failed (ptrace ESRCH, empty maps, unreadable memory), a dead process is the real story.
    if (isHotstackError(e) && proc.isGone()) fail('ESRCH', `process ${proc.pid} exited`);
    throw e;
  }
}

function resume(tid: number, how: Resume): void {
  if (how === 'syscall') pt.syscallStep(tid);
  else if (how === 'step') pt.singlestep(tid, 0);
  else {
    // Any stop on the way clears a pending interrupt: ask again each time.
    if (how === 'interrupt') pt.interrupt(tid);
    pt.cont(tid, 0);
  }
}

/** Put the saved registers back, unless the thread is gone (then there is nothing to restore). */
function restore(tid: number, saved: Regs): void {
  try {
    pt.setRegs(tid, saved);
  } catch (e) {
    if (!(isHotstackError(e) && e.errno === 'ESRCH')) throw e;
  }
}

/**
 * From a syscall stop at the end of a stub operation, walk the thread into
 * an interrupt event stop (raised on its way back to user space, before any
 * user instruction runs: the restore sequence at `pc` is not executed), so
 * that SETREGS of the saved registers gets the kernel's own restart handling
 * of an interrupted system call, exactly as without a stub. Signals met on
 * the way are owed.
 */
export function parkAfterSyscallStop(proc: StoppedProcess, tid: number, pc: bigint, deadline: number, what: string): void {
  dieAt('stub-interrupted');
  runUntil<true>(proc, tid, {
    what,
    resume: 'interrupt',
    timeoutMessage: `${what} in process ${proc.pid} did not stop after completing`,
    onStop(st, now) {
      if (st.kind === 'event-stop') {
        if (arch.process.pc(now) !== pc) fail('EIO', `${what} in process ${proc.pid}: unexpected stop at ${hex(arch.process.pc(now))}`);
        return true;
      }
      if (st.kind === 'signal' && st.signal !== SYSCALL_TRAP) owe(proc, tid, st.signal);
      return undefined;
    },
  }, deadline);
}
