/**
 * System calls run by a stopped thread of the target (mmap, mprotect,
 * munmap), with the thread's registers restored exactly afterwards.
 */
import { errnoName, fail, ERRNO, knownErrno } from '../../../errors.js';
import { arch, type BatchCall } from '../../../arch/index.js';
import * as pt from '../ptrace.js';
import type { StoppedProcess } from '../threads.js';
import { testMode } from '../../../core/fault.js';
import { hasSeccompFilter, readStatus, signalMasksOf } from '../procfs.js';
import { dieAt, drive, exitAware, hex, isCrashSignal, owe, registerArgs, parkAfterSyscallStop, SYSCALL_TIMEOUT_MS, SYSCALL_TRAP, type Operation } from './driver.js';
import { findSyscallInsn, placeStub, runtimePageOf } from './runtime.js';

export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const PROT_EXEC = 4;
export const MAP_PRIVATE = 0x02;
export const MAP_ANONYMOUS = 0x20;
export const MAP_FIXED_NOREPLACE = 0x100000;

/** Result of a remote system call: the raw signed return, and errno (0 on success) as the kernel's -4095..-1 convention says. */
export interface SyscallResult {
  value: bigint;
  errno: number;
}

const abi = arch.process;

function unexpected(nr: number | bigint, pid: number, st: { kind: string; signal?: number }, pc: bigint): never {
  const how = st.kind === 'signal' ? pt.signalName(st.signal!) : st.kind;
  fail('EIO', `remote system call ${nr} in process ${pid}: unexpected ${how} stop at ${hex(pc)}`);
}

/** The raw return of a system call, with errno as the kernel's -4095..-1 convention says. */
function syscallResult(raw: bigint): SyscallResult {
  const value = BigInt.asIntN(64, raw);
  return { value, errno: value < 0n && value >= -4095n ? Number(-value) : 0 };
}

/**
 * Run system call `nr` with up to six arguments on stopped thread `tid`,
 * and restore its registers exactly. An interrupted system call the thread
 * was stopped in is not restarted onto our instruction: it restarts later,
 * from the restored registers. With a runtime page it is a batch of one
 * (see remoteSyscalls).
 */
export function remoteSyscall(proc: StoppedProcess, tid: number, nr: number | bigint, args: (number | bigint)[] = []): SyscallResult {
  return exitAware(proc, () => {
    const values = registerArgs(args, 'a system call takes');
    proc.thread(tid); // must be one of ours and stopped
    if (runtimePageOf(proc) !== undefined) return runBatch(proc, tid, [{ nr: BigInt(nr), args: values, expect: 0n }], 'stub-syscall')[0]!;
    // No runtime page yet (the mmap that creates it): a borrowed system call
    // instruction, single-stepped. A hotstack killed during these microseconds
    // leaves the thread running on from it with our registers.
    const saved = pt.getRegs(tid);
    const at = findSyscallInsn(proc, abi.pc(saved));
    const after = at + BigInt(abi.syscallInsn.length);
    const op: Operation<bigint> = {
      what: `remote system call ${nr}`,
      timeoutMs: SYSCALL_TIMEOUT_MS,
      timeoutMessage: `remote system call ${nr} in process ${proc.pid} did not complete within ${SYSCALL_TIMEOUT_MS} ms`,
      resume: 'step',
      onStop(st, now) {
        const pc = abi.pc(now);
        if (st.kind === 'signal' && st.signal === pt.SIG.SIGTRAP && pc === after) return abi.syscallReturn(now);
        if (pc !== at) unexpected(nr, proc.pid, st, pc);
        // A signal dequeued before our instruction ran: owe it to the thread, go on.
        if (st.kind === 'signal') owe(proc, tid, st.signal);
        return undefined;
      },
    };
    return syscallResult(drive(proc, tid, saved, abi.syscallRegs(saved, at, BigInt(nr), values), op));
  });
}

/**
 * Run several system calls on stopped thread `tid` in one stub run (one
 * resume per system call entry and exit, one park at the end, instead of a
 * stub each): the batch ends after the first call that does not return its
 * `expect`, in the stub itself too (so a hotstack killed meanwhile never
 * runs the calls after a surprise, e.g. an mprotect after an mmap that
 * landed elsewhere). Needs the runtime page. Returns the results of the
 * calls that ran, in order; the thread's registers are restored exactly.
 */
export function remoteSyscalls(proc: StoppedProcess, tid: number, calls: BatchCall[]): SyscallResult[] {
  return exitAware(proc, () => {
    for (const c of calls) registerArgs(c.args, 'a system call takes');
    proc.thread(tid);
    return calls.length ? runBatch(proc, tid, calls, 'batch-syscall') : [];
  });
}

/**
 * Signals whose default action is to ignore them, in order of preference
 * (SIGURG is rarely caught outside Go, SIGWINCH outside terminal programs).
 */
const QUIET_SIGNALS = [pt.SIG.SIGURG, pt.SIG.SIGWINCH, pt.SIG.SIGCHLD];

/** The signal each held thread's batches end with (null: none fits), per stop. */
const endSignals = new WeakMap<StoppedProcess, Map<number, number | null>>();

/**
 * A quiet signal for thread `tid` to end a batch with: one it neither
 * blocks nor catches (ignored, by default or SIG_IGN), so that untraced it
 * is discarded, while a traced thread still stops for it (the kernel queues
 * even ignored signals for a tracer). None under a seccomp filter, which
 * may refuse the tgkill or kill the process for it.
 */
function pickQuietSignal(pid: number, tid: number): number | null {
  let status: string;
  try {
    status = readStatus(pid, tid);
  } catch {
    return null;
  }
  const m = signalMasksOf(status);
  if (!m || hasSeccompFilter(status)) return null;
  return QUIET_SIGNALS.find((sig) => !((m.blocked | m.caught) & (1n << BigInt(sig - 1)))) ?? null;
}

/** The signal a batch of `n` calls on `tid` ends with, undefined for a batch with a stop at each call. */
function endSignalFor(proc: StoppedProcess, tid: number, n: number): number | undefined {
  if (n > abi.batchResultRegs || (testMode() && process.env.HOTSTACK_TEST_BATCH === 'stops')) return undefined;
  let byTid = endSignals.get(proc);
  if (!byTid) endSignals.set(proc, (byTid = new Map()));
  let sig = byTid.get(tid);
  if (sig === undefined) byTid.set(tid, (sig = pickQuietSignal(proc.pid, tid)));
  return sig ?? undefined;
}

/**
 * The stub run of remoteSyscall and remoteSyscalls: one stop for the whole
 * batch when the thread can end it with a quiet signal, else a syscall stop
 * at each call's entry and exit. Either way only stops that are harmless if
 * hotstack dies (a pending single-step would leave the untraced thread a
 * fatal SIGTRAP). `stage`: the prefix of the test-kill stages (see dieAt).
 */
function runBatch(proc: StoppedProcess, tid: number, calls: BatchCall[], stage: string): SyscallResult[] {
  const saved = pt.getRegs(tid);
  const sig = endSignalFor(proc, tid, calls.length);
  const stub = abi.batchStub(calls, saved, sig);
  const at = placeStub(proc, stub);
  if (at === undefined) fail('EIO', `internal: a batch of system calls in process ${proc.pid} needs its runtime page`);
  const what = calls.length === 1 ? `remote system call ${calls[0]!.nr}` : `remote system calls ${calls.map((c) => c.nr).join(', ')}`;
  const common = { what, stage: 'stub-setregs', timeoutMs: SYSCALL_TIMEOUT_MS, timeoutMessage: `${what} in process ${proc.pid} did not complete within ${SYSCALL_TIMEOUT_MS} ms` };
  const op = sig === undefined ? stopAtEachCall(proc, tid, calls, at, stub.ends, stage, what) : stopAtSignal(proc, tid, calls, at, at + BigInt(stub.signalEnd!), sig, stage);
  return drive(proc, tid, saved, abi.batchRegs(saved, at), { ...common, ...op });
}

type BatchOp = Pick<Operation<SyscallResult[]>, 'resume' | 'onStop'>;

/** Results of the calls that ran: up to and including the first that did not return its `expect`. */
function ranPrefix(calls: BatchCall[], raw: bigint[]): SyscallResult[] {
  const out: SyscallResult[] = [];
  for (let i = 0; i < calls.length; i++) {
    const r = syscallResult(raw[i]!);
    out.push(r);
    if (BigInt.asUintN(64, r.value) !== BigInt.asUintN(64, calls[i]!.expect)) break;
  }
  return out;
}

/**
 * The thread runs freely to the stub's tgkill and stops for the signal
 * (a signal-delivery stop: SETREGS of the saved registers there gets the
 * kernel's restart of an interrupted system call, as at an interrupt
 * stop; resuming suppresses the signal). The results are in registers.
 */
function stopAtSignal(proc: StoppedProcess, tid: number, calls: BatchCall[], at: bigint, end: bigint, sig: number, stage: string): BatchOp {
  return {
    resume: 'cont',
    onStop(st, now) {
      const pc = abi.pc(now);
      if (st.kind === 'signal' && st.signal === sig && pc === end) {
        dieAt(`${stage}-signal`);
        return ranPrefix(calls, abi.batchResults(now, calls.length));
      }
      // Another signal on the way (before the stub's first instruction, or between its calls): owe it, go on.
      if (pc < at || pc > end || (st.kind === 'signal' && isCrashSignal(st.signal))) unexpected(calls[0]!.nr, proc.pid, st, pc);
      if (st.kind === 'signal') owe(proc, tid, st.signal);
      return undefined;
    },
  };
}

/** A syscall stop at each call's entry and exit, then a park in an interrupt stop (see parkAfterSyscallStop). */
function stopAtEachCall(proc: StoppedProcess, tid: number, calls: BatchCall[], at: bigint, offsets: number[], stage: string, what: string): BatchOp {
  const ends = offsets.map((e) => at + BigInt(e));
  pt.setOptions(tid, pt.PTRACE_O_TRACESYSGOOD);
  const results: SyscallResult[] = [];
  let entered = false;
  return {
    resume: 'syscall',
    onStop(st, now, deadline) {
      const pc = abi.pc(now);
      const i = results.length;
      if (st.kind === 'signal' && st.signal === SYSCALL_TRAP && pc === ends[i]) {
        if (!entered) {
          entered = true;
          dieAt(`${stage}-entry`);
          return undefined;
        }
        entered = false;
        dieAt(`${stage}-exit`);
        const r = syscallResult(abi.syscallReturn(now));
        results.push(r);
        if (i + 1 < calls.length && BigInt.asUintN(64, r.value) === BigInt.asUintN(64, calls[i]!.expect)) return undefined;
        parkAfterSyscallStop(proc, tid, pc, deadline, what);
        return results;
      }
      // A signal may interrupt the moves before a system call: anywhere up to it. Owe it to the thread, go on.
      if (entered || pc < at || pc > ends[i]!) unexpected(calls[i]?.nr ?? -1, proc.pid, st, pc);
      if (st.kind === 'signal') owe(proc, tid, st.signal);
      return undefined;
    },
  };
}

function syscallFailure(what: string, pid: number, errno: number, hint = ''): never {
  fail(knownErrno(errno) ?? 'EIO', `${what} in process ${pid} failed: ${errnoName(errno)}${hint}`);
}

/** Why making memory executable failed, when a policy forbids it. */
function execHint(errno: number, prot: number, doing: string): string {
  return (errno === ERRNO.EPERM || errno === ERRNO.EACCES) && prot & PROT_EXEC
    ? ` (${doing} refused: a seccomp filter or MemoryDenyWriteExecute=yes forbids it)`
    : '';
}

/**
 * mmap inside the target. Returns the address; failures throw HotstackError
 * with the kernel's errno name (EEXIST for an occupied MAP_FIXED_NOREPLACE
 * hint, so callers can try the next one).
 */
export function remoteMmap(
  proc: StoppedProcess,
  tid: number,
  addr: bigint,
  len: number | bigint,
  prot: number,
  flags: number,
  fd = -1,
  off: number | bigint = 0,
): bigint {
  const r = remoteSyscall(proc, tid, abi.sys.mmap, [addr, len, prot, flags, fd, off]);
  if (r.errno) mmapFailure(proc.pid, addr, len, prot, flags, r.errno);
  return BigInt.asUintN(64, r.value);
}

/** The error of a failed remote mmap, with the kernel's errno name (EEXIST for an occupied MAP_FIXED_NOREPLACE hint). */
export function mmapFailure(pid: number, addr: bigint, len: number | bigint, prot: number, flags: number, errno: number): never {
  syscallFailure(`mmap(${hex(addr)}, ${len}, prot ${prot}, flags ${hex(BigInt(flags))})`, pid, errno, execHint(errno, prot, 'executable memory'));
}

/** The error of a failed remote mprotect. */
export function mprotectFailure(pid: number, addr: bigint, len: number | bigint, prot: number, errno: number): never {
  syscallFailure(`mprotect(${hex(addr)}, ${len}, prot ${prot})`, pid, errno, execHint(errno, prot, 'making memory executable is'));
}

/** munmap inside the target. */
export function remoteMunmap(proc: StoppedProcess, tid: number, addr: bigint, len: number | bigint): void {
  const r = remoteSyscall(proc, tid, abi.sys.munmap, [addr, len]);
  if (r.errno) syscallFailure(`munmap(${hex(addr)}, ${len})`, proc.pid, r.errno);
}

/** mprotect inside the target (for the final W^X permissions of payload memory). */
export function remoteMprotect(proc: StoppedProcess, tid: number, addr: bigint, len: number | bigint, prot: number): void {
  const r = remoteSyscall(proc, tid, abi.sys.mprotect, [addr, len, prot]);
  if (r.errno) mprotectFailure(proc.pid, addr, len, prot, r.errno);
}
