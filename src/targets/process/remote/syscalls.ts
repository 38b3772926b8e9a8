/**
 * System calls run by a stopped thread of the target (mmap, mprotect,
 * munmap), with the thread's registers restored exactly afterwards.
 */
import { errnoName, fail, ERRNO, knownErrno } from '../../../errors.js';
import { arch, type BatchCall } from '../../../arch/index.js';
import * as pt from '../ptrace.js';
import type { StoppedProcess } from '../threads.js';
import { dieAt, drive, exitAware, hex, owe, registerArgs, parkAfterSyscallStop, SYSCALL_TIMEOUT_MS, SYSCALL_TRAP, type Operation } from './driver.js';
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
 * The stub run of remoteSyscall and remoteSyscalls. Only syscall stops and
 * interrupt stops: harmless if hotstack dies (a pending single-step would
 * leave the untraced thread a fatal SIGTRAP). `stage`: the prefix of the
 * test-kill stages at each call's entry and exit (see dieAt).
 */
function runBatch(proc: StoppedProcess, tid: number, calls: BatchCall[], stage: string): SyscallResult[] {
  const saved = pt.getRegs(tid);
  const stub = abi.batchStub(calls, saved);
  const at = placeStub(proc, stub);
  if (at === undefined) fail('EIO', `internal: a batch of system calls in process ${proc.pid} needs its runtime page`);
  const ends = stub.ends.map((e) => at + BigInt(e));
  const what = calls.length === 1 ? `remote system call ${calls[0]!.nr}` : `remote system calls ${calls.map((c) => c.nr).join(', ')}`;
  pt.setOptions(tid, pt.PTRACE_O_TRACESYSGOOD);
  const results: SyscallResult[] = [];
  let entered = false;
  const op: Operation<SyscallResult[]> = {
    what,
    resume: 'syscall',
    stage: 'stub-setregs',
    timeoutMs: SYSCALL_TIMEOUT_MS,
    timeoutMessage: `${what} in process ${proc.pid} did not complete within ${SYSCALL_TIMEOUT_MS} ms`,
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
  return drive(proc, tid, saved, abi.batchRegs(saved, at), op);
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
