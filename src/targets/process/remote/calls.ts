/**
 * Function calls run by a stopped thread of the target (hooks, IFUNC
 * resolvers), with the thread's registers restored exactly afterwards.
 */
import { fail } from '../../../errors.js';
import { arch } from '../../../arch/index.js';
import * as pt from '../ptrace.js';
import type { StoppedProcess } from '../threads.js';
import { dieAt, drive, exitAware, hex, isCrashSignal, owe, registerArgs, parkAfterSyscallStop, siginfoOrNull, SYSCALL_TIMEOUT_MS, SYSCALL_TRAP, type Operation } from './driver.js';
import { placeStub } from './runtime.js';

/** Result of a remote function call. */
export interface CallResult {
  /** The return register as a signed 64-bit value. */
  value: bigint;
  /** Its low 32 bits as a signed int: what an `int` function returned. */
  int: number;
}

const abi = arch.process;

/** EFAULT for a hook that crashed: the signal, where, and the faulting address. */
function hookCrashed(proc: StoppedProcess, tid: number, fn: bigint, signal: number, pc: bigint): never {
  const info = siginfoOrNull(tid);
  const faultAddr = info ? info.readBigUInt64LE(16) : undefined;
  const where = signal === pt.SIG.SIGSEGV || signal === pt.SIG.SIGBUS ? ` accessing ${hex(faultAddr ?? 0n)}` : '';
  return fail('EFAULT', `hook at ${hex(fn)} in process ${proc.pid} crashed with ${pt.signalName(signal)} at ${hex(pc)}${where}`);
}

/**
 * Call `fn(args...)` inside the target on stopped thread `tid` and return
 * its result. With a runtime page the call runs from a self-restoring stub;
 * before one exists its return address is `trapAddr`, which must hold the
 * arch's trap byte in executable memory. The frame goes below the red zone,
 * aligned as the ABI expects at a function's entry.
 *
 * A crash of the function (SIGSEGV, ...) restores the thread and throws
 * EFAULT; a function that does not return within `timeoutMs` (it waits for
 * a lock another stopped thread holds) is interrupted, the thread restored,
 * and ETIMEDOUT thrown. Other signals arriving meanwhile are owed to the
 * thread and delivered on resume/detach.
 */
export function remoteCall(
  proc: StoppedProcess,
  tid: number,
  fn: bigint,
  args: (number | bigint)[],
  trapAddr: bigint,
  timeoutMs: number,
): CallResult {
  return exitAware(proc, () => {
    const values = registerArgs(args, 'remote calls take');
    proc.thread(tid);
    const saved = pt.getRegs(tid);
    const stub = abi.callStub(fn, saved);
    const at = placeStub(proc, stub);
    const what = `the hook at ${hex(fn)}`;
    const base = {
      what,
      timeoutMs,
      timeoutMessage: `hook at ${hex(fn)} in process ${proc.pid} did not return within ${timeoutMs} ms (it may wait for a lock held by another stopped thread)`,
    };
    const crashed = (st: { kind: string; signal?: number }, pc: bigint): void => {
      if (st.kind !== 'signal') return;
      // Leave a crash signal undelivered (restarting from this stop with 0 drops it).
      if (isCrashSignal(st.signal!)) hookCrashed(proc, tid, fn, st.signal!, pc);
      owe(proc, tid, st.signal!);
    };
    let op: Operation<bigint>;
    let regs: pt.Regs;
    if (at !== undefined) {
      // The stub calls fn, then a getpid marker whose syscall-entry stop ends the
      // call; the thread runs under PTRACE_SYSCALL, its own system calls continued.
      pt.setOptions(tid, pt.PTRACE_O_TRACESYSGOOD);
      const sp = abi.callFrame(saved, false);
      const marker = at + BigInt(stub.endOffset);
      regs = abi.callRegs(saved, at, sp, values);
      op = {
        ...base,
        resume: 'syscall',
        stage: 'call-setregs',
        onStop(st, now, deadline) {
          if (st.kind === 'signal' && st.signal === SYSCALL_TRAP) {
            const result = abi.pc(now) === marker ? abi.callMarker(now, sp) : undefined;
            if (result === undefined) {
              dieAt('call-hook-syscall');
              return undefined;
            }
            dieAt('call-marker');
            parkAfterSyscallStop(proc, tid, marker, deadline + SYSCALL_TIMEOUT_MS, what);
            return result;
          }
          crashed(st, abi.pc(now));
          return undefined;
        },
      };
    } else {
      const sp = abi.callFrame(saved, true);
      proc.memory.writeU64(sp, trapAddr);
      regs = abi.callRegs(saved, fn, sp, values);
      const trapped = trapAddr + 1n;
      op = {
        ...base,
        resume: 'cont',
        onStop(st, now) {
          if (st.kind === 'signal' && st.signal === pt.SIG.SIGTRAP && abi.pc(now) === trapped) return abi.callReturn(now);
          crashed(st, abi.pc(now));
          return undefined;
        },
      };
    }
    const result = drive(proc, tid, saved, regs, op);
    return { value: BigInt.asIntN(64, result), int: Number(BigInt.asIntN(32, result)) };
  });
}
