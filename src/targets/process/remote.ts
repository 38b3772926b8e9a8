/**
 * Making a stopped process do things for us: system calls (mmap, mprotect)
 * and function calls (hooks), run on one thread while every other thread
 * stays stopped. Once the process has a runtime page (useRuntimePage), each
 * operation runs from a self-restoring stub written there, so that a
 * hotstack killed at any instant leaves the thread to finish the operation
 * and restore itself; before that (the mmap creating the page), an existing
 * `syscall` instruction of the target is borrowed.
 */
import { errnoName, fail, ERRNO, isHotstackError, knownErrno } from '../../errors.js';
import * as pt from './ptrace.js';
import { readMaps, type MapEntry } from './maps.js';
import { leaderLeftEarly, type StoppedProcess } from './threads.js';
import { testMode } from '../../core/fault.js';

/** Linux x86-64 system call numbers used here (and handy for callers). */
export const SYS = {
  read: 0,
  write: 1,
  close: 3,
  mmap: 9,
  mprotect: 10,
  munmap: 11,
  getpid: 39,
  gettid: 186,
} as const;

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

/** Result of a remote function call. */
export interface CallResult {
  /** rax as a signed 64-bit value. */
  value: bigint;
  /** The low 32 bits of rax as a signed int: what an `int` function returned. */
  int: number;
}

const hex = (a: bigint): string => '0x' + a.toString(16);
const SYSCALL_TIMEOUT_MS = 5000;
const MAX_SCAN = 16 * 1024 * 1024;

// ---------------------------------------------------------------------------
// finding a syscall instruction

const syscallCache = new WeakMap<StoppedProcess, bigint>();

function scanFor0f05(proc: StoppedProcess, m: MapEntry): bigint | undefined {
  const len = Number(m.end - m.start < BigInt(MAX_SCAN) ? m.end - m.start : BigInt(MAX_SCAN));
  const bytes = proc.memory.readPartial(m.start, len);
  for (let i = 0; i + 1 < bytes.length; i++) {
    // Any 0f 05 will do, aligned to an instruction boundary or not: we set rip
    // to it and execute exactly one instruction.
    if (bytes[i] === 0x0f && bytes[i + 1] === 0x05) return m.start + BigInt(i);
  }
  return undefined;
}

/**
 * Address of a `syscall` instruction (0f 05) in executable memory of the
 * process: the vdso first (always there, never replaced), then libc, then
 * any executable mapping. Cached per StoppedProcess.
 */
export function findSyscallInsn(proc: StoppedProcess): bigint {
  const cached = syscallCache.get(proc);
  if (cached !== undefined) return cached;
  const exec = readMaps(proc.pid).filter((m) => m.perms[0] === 'r' && m.perms[2] === 'x' && m.path !== '[vsyscall]');
  const ordered = [
    ...exec.filter((m) => m.path === '[vdso]'),
    ...exec.filter((m) => /\/libc[.-][^/]*$/.test(m.path)),
    ...exec,
  ];
  for (const m of ordered) {
    const at = scanFor0f05(proc, m);
    if (at !== undefined) {
      syscallCache.set(proc, at);
      return at;
    }
  }
  fail('ENOENT', `no syscall instruction found in the executable mappings of process ${proc.pid}`);
}

// ---------------------------------------------------------------------------
// helpers

function toU64(v: number | bigint): bigint {
  return BigInt.asUintN(64, BigInt(v));
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
    } else if (st.kind === 'signal' && !isCrashSignal(st.signal)) proc.owe(tid, st.signal, siginfoOrNull(tid));
    pt.cont(tid, 0);
  }
}

function siginfoOrNull(tid: number): Buffer | null {
  try {
    return pt.getSiginfo(tid);
  } catch {
    return null;
  }
}

/**
 * waitFor until `deadline`, noticing a process that died meanwhile (killed
 * by someone else, or exiting on its own as a zombie whose exit is not
 * reported to us) at once as ESRCH, instead of after the whole timeout.
 */
function waitAlive(proc: StoppedProcess, tid: number, deadline: number): pt.WaitStatus | null {
  for (;;) {
    const left = deadline - performance.now();
    const st = pt.waitFor(tid, Math.max(0, Math.min(left, 100)));
    if (st || left <= 100) return st;
    if (proc.isGone()) exitedDuring(proc, tid, 'a remote operation');
  }
}

/** Any failure of a process that died under us becomes ESRCH "process N exited". */
function exitAware<T>(proc: StoppedProcess, body: () => T): T {
  try {
    return body();
  } catch (e) {
    // Whatever failed (ptrace ESRCH, empty maps, unreadable memory), a dead process is the real story.
    if (isHotstackError(e) && proc.isGone()) fail('ESRCH', `process ${proc.pid} exited`);
    throw e;
  }
}

function exitedDuring(proc: StoppedProcess, tid: number, what: string): never {
  proc.noteExit(tid);
  fail('ESRCH', `process ${proc.pid} exited during ${what}`);
}

/** Put the saved registers back, unless the thread is gone (then there is nothing to restore). */
function restore(tid: number, saved: pt.Regs): void {
  try {
    pt.setRegs(tid, saved);
  } catch (e) {
    if (!(isHotstackError(e) && e.errno === 'ESRCH')) throw e;
  }
}

// ---------------------------------------------------------------------------
// self-restoring stubs
//
// Once the process has a runtime page (an RX page of ours, see
// useRuntimePage), every remote operation runs from a stub freshly written
// there: the operation itself, then a restore sequence that puts back every
// register of the thread from immediates and jumps to its original rip.
// While hotstack lives it stops the thread between the two (syscall stops,
// then an interrupt stop), restores the registers with SETREGS as always, and
// the restore sequence never runs. If hotstack is killed at any instant the
// kernel detaches the thread, it finishes the operation and restores itself.
//
// Only stops that are harmless without a tracer are used on this path:
// syscall-entry/exit stops (PTRACE_SYSCALL) and PTRACE_INTERRUPT event stops.
// A single-step is not: if the tracer dies while a step is pending or at the
// step's SIGTRAP stop, the untraced thread gets that SIGTRAP and dies.

/** Stop signal of a syscall stop with PTRACE_O_TRACESYSGOOD. */
const SYSCALL_TRAP = pt.SIG.SIGTRAP | 0x80;

/** Resume until the next syscall entry/exit (or signal) stop. */
function syscallStep(tid: number): void {
  pt.syscallStep(tid);
}

/**
 * Test hook: HOTSTACK_TEST_DIE_AT=<stage> makes this process SIGKILL itself
 * there (tests of a killed hotstack); only with HOTSTACK_TEST_MODE=1 too.
 */
function dieAt(stage: string): void {
  if (process.env.HOTSTACK_TEST_DIE_AT === stage && testMode()) process.kill(process.pid, 'SIGKILL');
}

const runtimePages = new WeakMap<StoppedProcess, bigint>();
/** Next stub slot per runtime page (rotated, see STUB_SLOTS). */
const nextSlot = new Map<bigint, number>();

/** The runtime page: bytes 0..15 are int3 (remoteCall's trap), the rest holds stubs. */
export const RUNTIME_PAGE_SIZE = 4096;
const STUB_OFFSET = 256;
const STUB_SIZE = 256;
/**
 * Stubs rotate among this many slots, starting at a random one per page, so
 * that a thread left running an old stub by a killed hotstack (e.g. inside a
 * long hook) is unlikely to find its stub overwritten by the next hotstack.
 */
const STUB_SLOTS = (RUNTIME_PAGE_SIZE - STUB_OFFSET) / STUB_SIZE;

/**
 * Tell the remote operations of `proc` that `page` (RUNTIME_PAGE_SIZE bytes,
 * RX, ours) may hold self-restoring stubs. Until this is called, system calls
 * borrow a `syscall` instruction of the target and calls return to the int3
 * at their trap address: a hotstack killed meanwhile leaves the thread
 * running with temporary registers.
 */
export function useRuntimePage(proc: StoppedProcess, page: bigint): void {
  runtimePages.set(proc, page);
}

function stubSlot(page: bigint): bigint {
  const i = nextSlot.get(page) ?? Math.floor(Math.random() * STUB_SLOTS);
  nextSlot.set(page, (i + 1) % STUB_SLOTS);
  return page + BigInt(STUB_OFFSET + i * STUB_SIZE);
}

class Asm {
  readonly bytes: number[] = [];
  u8(...b: number[]): this {
    this.bytes.push(...b);
    return this;
  }
  u64(v: bigint): this {
    const x = BigInt.asUintN(64, v);
    for (let i = 0n; i < 8n; i++) this.bytes.push(Number((x >> (8n * i)) & 0xffn));
    return this;
  }
  /** movabs reg, imm64 (reg numbered as in the encoding: rax 0 ... r15 15). */
  movabs(reg: number, v: bigint): this {
    return this.u8(reg >= 8 ? 0x49 : 0x48, 0xb8 + (reg & 7)).u64(v);
  }
  get length(): number {
    return this.bytes.length;
  }
}

const ENC: Record<string, number> = {
  rax: 0, rcx: 1, rdx: 2, rbx: 3, rsp: 4, rbp: 5, rsi: 6, rdi: 7,
  r8: 8, r9: 9, r10: 10, r11: 11, r12: 12, r13: 13, r14: 14, r15: 15,
};

const ERESTARTSYS = -512n;
const ERESTARTNOINTR = -513n;
const ERESTARTNOHAND = -514n;
const ERESTART_RESTARTBLOCK = -516n;
const NR_RESTART_SYSCALL = 219n;

/**
 * The registers the thread must get back when nobody will SETREGS them:
 * `saved`, with the kernel's system call restart applied when the thread
 * was stopped inside a system call that returns to user space restarted
 * (what the kernel does on resume when no handler runs).
 */
export function selfRestoredRegs(saved: pt.Regs): pt.Regs {
  const r = { ...saved };
  const nr = BigInt.asIntN(64, saved.orig_rax);
  const ret = BigInt.asIntN(64, saved.rax);
  if (nr >= 0n) {
    if (ret === ERESTARTSYS || ret === ERESTARTNOINTR || ret === ERESTARTNOHAND) {
      r.rax = saved.orig_rax;
      r.rip = saved.rip - 2n;
    } else if (ret === ERESTART_RESTARTBLOCK) {
      r.rax = NR_RESTART_SYSCALL;
      r.rip = saved.rip - 2n;
    }
  }
  return r;
}

/**
 * The restore sequence: rflags through a scratch stack below the red zone,
 * every general register from an immediate, rsp last (mov does not touch
 * flags), then an absolute jump to the original rip.
 */
function emitRestore(a: Asm, saved: pt.Regs): void {
  const r = selfRestoredRegs(saved);
  a.movabs(ENC.rsp!, ((r.rsp - 128n - 64n) & ~15n));
  a.movabs(ENC.rax!, r.eflags & ~0x100n); // never TF
  a.u8(0x50); // push rax
  a.u8(0x9d); // popfq
  for (const n of ['rax', 'rcx', 'rdx', 'rbx', 'rbp', 'rsi', 'rdi', 'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15'] as const) {
    a.movabs(ENC[n]!, r[n]);
  }
  a.movabs(ENC.rsp!, r.rsp);
  a.u8(0xff, 0x25, 0, 0, 0, 0).u64(r.rip); // jmp *0(%rip)
}

function writeStub(proc: StoppedProcess, at: bigint, a: Asm): void {
  if (a.length > STUB_SIZE) fail('EIO', `internal: stub of ${a.length} bytes exceeds its ${STUB_SIZE}-byte slot`);
  proc.memory.write(at, Uint8Array.from(a.bytes));
}

/**
 * From a syscall stop at the end of a stub operation, walk the thread into
 * an interrupt event stop (raised on its way back to user space, before any
 * user instruction runs: the restore sequence at `rip` is not executed), so
 * that SETREGS of the saved registers gets the kernel's own restart handling
 * of an interrupted system call, exactly as without a stub. Signals met on
 * the way are owed.
 */
function parkAfterSyscallStop(proc: StoppedProcess, tid: number, rip: bigint, deadline: number, what: string): void {
  pt.interrupt(tid);
  dieAt('stub-interrupted');
  pt.cont(tid, 0);
  for (;;) {
    const st = waitAlive(proc, tid, deadline);
    if (!st) {
      reclaim(proc, tid, what);
      fail('ETIMEDOUT', `${what} in process ${proc.pid} did not stop after completing`);
    }
    if (st.kind === 'exited' || st.kind === 'killed') exitedDuring(proc, tid, what);
    if (st.kind === 'event-stop') {
      const now = pt.getRegs(tid);
      if (now.rip !== rip) fail('EIO', `${what} in process ${proc.pid}: unexpected stop at ${hex(now.rip)}`);
      return;
    }
    if (st.kind === 'signal' && st.signal !== SYSCALL_TRAP) proc.owe(tid, st.signal, siginfoOrNull(tid));
    // Any stop on the way clears a pending interrupt: ask again.
    pt.interrupt(tid);
    pt.cont(tid, 0);
  }
}

function syscallViaStub(proc: StoppedProcess, tid: number, page: bigint, nr: number | bigint, a: bigint[]): SyscallResult {
  const saved = pt.getRegs(tid);
  const at = stubSlot(page);
  const asm = new Asm().u8(0x0f, 0x05); // syscall
  emitRestore(asm, saved);
  writeStub(proc, at, asm);
  pt.setOptions(tid, pt.PTRACE_O_TRACESYSGOOD);
  const regs: pt.Regs = {
    ...saved,
    rip: at,
    rax: toU64(nr),
    orig_rax: toU64(-1),
    rdi: a[0]!,
    rsi: a[1]!,
    rdx: a[2]!,
    r10: a[3]!,
    r8: a[4]!,
    r9: a[5]!,
    eflags: saved.eflags & ~0x100n,
  };
  const what = `remote system call ${nr}`;
  pt.setRegs(tid, regs);
  dieAt('stub-setregs');
  let raw: bigint | undefined;
  try {
    syscallStep(tid);
    const deadline = performance.now() + SYSCALL_TIMEOUT_MS;
    let entered = false;
    while (raw === undefined) {
      const st = waitAlive(proc, tid, deadline);
      if (!st) {
        reclaim(proc, tid, what);
        fail('ETIMEDOUT', `remote system call ${nr} in process ${proc.pid} did not complete within ${SYSCALL_TIMEOUT_MS} ms`);
      }
      if (st.kind === 'exited' || st.kind === 'killed') exitedDuring(proc, tid, what);
      const now = pt.getRegs(tid);
      if (st.kind === 'signal' && st.signal === SYSCALL_TRAP && now.rip === at + 2n) {
        if (entered) {
          dieAt('stub-syscall-exit');
          raw = now.rax;
          parkAfterSyscallStop(proc, tid, at + 2n, deadline, what);
          break;
        }
        entered = true;
        dieAt('stub-syscall-entry');
      } else if (now.rip !== at) {
        fail(
          'EIO',
          `remote system call ${nr} in process ${proc.pid}: unexpected ${st.kind === 'signal' ? pt.signalName(st.signal) : st.kind} stop at ${hex(now.rip)}`,
        );
      } else if (st.kind === 'signal') {
        // A signal dequeued before our instruction ran: owe it to the thread, go on.
        proc.owe(tid, st.signal, siginfoOrNull(tid));
      }
      syscallStep(tid);
    }
  } finally {
    restore(tid, saved);
  }
  const value = BigInt.asIntN(64, raw);
  const errno = value < 0n && value >= -4095n ? Number(-value) : 0;
  return { value, errno };
}

// ---------------------------------------------------------------------------
// system calls

/**
 * Run system call `nr` with up to six arguments on stopped thread `tid`,
 * and restore its registers exactly. orig_rax is set to -1 so that, if the
 * thread had been stopped inside a blocking system call, the kernel's
 * restart logic does not rewind rip onto our syscall instruction (the
 * original call is restarted later, from the restored registers).
 */
export function remoteSyscall(
  proc: StoppedProcess,
  tid: number,
  nr: number | bigint,
  args: (number | bigint)[] = [],
): SyscallResult {
  return exitAware(proc, () => syscallOn(proc, tid, nr, args));
}

function syscallOn(proc: StoppedProcess, tid: number, nr: number | bigint, args: (number | bigint)[]): SyscallResult {
  if (args.length > 6) fail('EINVAL', `a system call takes at most 6 arguments, got ${args.length}`);
  proc.thread(tid); // must be one of ours and stopped
  const a = [...args.map(toU64), 0n, 0n, 0n, 0n, 0n, 0n];
  const page = runtimePages.get(proc);
  if (page !== undefined) return syscallViaStub(proc, tid, page, nr, a);
  // No runtime page yet (the mmap that creates it): borrow a syscall
  // instruction of the target. A hotstack killed during these microseconds
  // leaves the thread running on from the borrowed instruction with our registers.
  const at = findSyscallInsn(proc);
  const saved = pt.getRegs(tid);
  const regs: pt.Regs = {
    ...saved,
    rip: at,
    rax: toU64(nr),
    orig_rax: toU64(-1),
    rdi: a[0]!,
    rsi: a[1]!,
    rdx: a[2]!,
    r10: a[3]!,
    r8: a[4]!,
    r9: a[5]!,
  };
  pt.setRegs(tid, regs);
  let raw: bigint | undefined;
  try {
    pt.singlestep(tid, 0);
    const deadline = performance.now() + SYSCALL_TIMEOUT_MS;
    while (raw === undefined) {
      const st = waitAlive(proc, tid, deadline);
      if (!st) {
        reclaim(proc, tid, `remote system call ${nr}`);
        fail('ETIMEDOUT', `remote system call ${nr} in process ${proc.pid} did not complete within ${SYSCALL_TIMEOUT_MS} ms`);
      }
      if (st.kind === 'exited' || st.kind === 'killed') exitedDuring(proc, tid, `remote system call ${nr}`);
      const now = pt.getRegs(tid);
      if (st.kind === 'signal' && st.signal === pt.SIG.SIGTRAP && now.rip === at + 2n) {
        raw = now.rax;
        break;
      }
      if (now.rip !== at) {
        fail(
          'EIO',
          `remote system call ${nr} in process ${proc.pid}: unexpected ${st.kind === 'signal' ? pt.signalName(st.signal) : st.kind} stop at ${hex(now.rip)}`,
        );
      }
      // A signal dequeued before our instruction ran: owe it to the thread, try again.
      if (st.kind === 'signal') proc.owe(tid, st.signal, siginfoOrNull(tid));
      pt.singlestep(tid, 0);
    }
  } finally {
    restore(tid, saved);
  }
  const value = BigInt.asIntN(64, raw);
  const errno = value < 0n && value >= -4095n ? Number(-value) : 0;
  return { value, errno };
}

function syscallFailure(what: string, pid: number, errno: number, hint = ''): never {
  fail(knownErrno(errno) ?? 'EIO', `${what} in process ${pid} failed: ${errnoName(errno)}${hint}`);
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
  const r = remoteSyscall(proc, tid, SYS.mmap, [addr, len, prot, flags, fd, off]);
  if (r.errno) {
    const hint =
      (r.errno === ERRNO.EPERM || r.errno === ERRNO.EACCES) && prot & PROT_EXEC
        ? ' (executable memory refused: a seccomp filter or MemoryDenyWriteExecute=yes forbids it)'
        : '';
    syscallFailure(`mmap(${hex(addr)}, ${len}, prot ${prot}, flags ${hex(BigInt(flags))})`, proc.pid, r.errno, hint);
  }
  return BigInt.asUintN(64, r.value);
}

/** munmap inside the target. */
export function remoteMunmap(proc: StoppedProcess, tid: number, addr: bigint, len: number | bigint): void {
  const r = remoteSyscall(proc, tid, SYS.munmap, [addr, len]);
  if (r.errno) syscallFailure(`munmap(${hex(addr)}, ${len})`, proc.pid, r.errno);
}

/** mprotect inside the target (for the final W^X permissions of payload memory). */
export function remoteMprotect(proc: StoppedProcess, tid: number, addr: bigint, len: number | bigint, prot: number): void {
  const r = remoteSyscall(proc, tid, SYS.mprotect, [addr, len, prot]);
  if (r.errno) {
    const hint =
      (r.errno === ERRNO.EPERM || r.errno === ERRNO.EACCES) && prot & PROT_EXEC
        ? ' (making memory executable is refused: a seccomp filter or MemoryDenyWriteExecute=yes forbids it)'
        : '';
    syscallFailure(`mprotect(${hex(addr)}, ${len}, prot ${prot})`, proc.pid, r.errno, hint);
  }
}

// ---------------------------------------------------------------------------
// function calls

const CRASH_SIGNALS: ReadonlySet<number> = new Set([
  pt.SIG.SIGSEGV,
  pt.SIG.SIGBUS,
  pt.SIG.SIGILL,
  pt.SIG.SIGFPE,
  pt.SIG.SIGABRT,
  pt.SIG.SIGSYS,
  pt.SIG.SIGTRAP,
]);

function isCrashSignal(sig: number): boolean {
  return CRASH_SIGNALS.has(sig);
}

/** Stack space skipped below the red zone before the call frame, in case the thread was in a leaf function. */
const CALL_GAP = 256n;

/**
 * Call `fn(args...)` inside the target on stopped thread `tid` and return
 * rax. The return address pushed is `trapAddr`, which must hold an int3
 * (0xcc) in executable memory: the call ends with a SIGTRAP at
 * trapAddr + 1. The stack frame goes below the 128-byte red zone, aligned
 * so that rsp % 16 == 8 at entry as the ABI expects after a call.
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
  return exitAware(proc, () => callOn(proc, tid, fn, args, trapAddr, timeoutMs));
}

function callOn(
  proc: StoppedProcess,
  tid: number,
  fn: bigint,
  args: (number | bigint)[],
  trapAddr: bigint,
  timeoutMs: number,
): CallResult {
  if (args.length > 6) fail('EINVAL', `remote calls take at most 6 register arguments, got ${args.length}`);
  proc.thread(tid);
  const page = runtimePages.get(proc);
  if (page !== undefined) return callViaStub(proc, tid, page, fn, args, timeoutMs);
  const saved = pt.getRegs(tid);
  const sp = ((saved.rsp - 128n - CALL_GAP) & ~15n) - 8n;
  proc.memory.writeU64(sp, trapAddr);
  pt.setRegs(tid, callRegs(saved, fn, sp, args));
  let result: bigint | undefined;
  try {
    pt.cont(tid, 0);
    const deadline = performance.now() + timeoutMs;
    while (result === undefined) {
      const st = waitAlive(proc, tid, deadline);
      if (!st) {
        reclaim(proc, tid, `the hook at ${hex(fn)}`);
        fail(
          'ETIMEDOUT',
          `hook at ${hex(fn)} in process ${proc.pid} did not return within ${timeoutMs} ms ` +
            `(it may wait for a lock held by another stopped thread)`,
        );
      }
      if (st.kind === 'exited' || st.kind === 'killed') exitedDuring(proc, tid, `the hook at ${hex(fn)}`);
      if (st.kind === 'signal') {
        const now = pt.getRegs(tid);
        if (st.signal === pt.SIG.SIGTRAP && now.rip === trapAddr + 1n) {
          result = now.rax;
          break;
        }
        // Leave a crash signal undelivered (restarting from this stop with 0 drops it).
        if (isCrashSignal(st.signal)) hookCrashed(proc, tid, fn, st.signal, now.rip);
        proc.owe(tid, st.signal, siginfoOrNull(tid));
      }
      pt.cont(tid, 0);
    }
  } finally {
    restore(tid, saved);
  }
  const value = BigInt.asIntN(64, result);
  return { value, int: Number(BigInt.asIntN(32, result)) };
}

/** EFAULT for a hook that crashed: the signal, where, and the faulting address. */
function hookCrashed(proc: StoppedProcess, tid: number, fn: bigint, signal: number, rip: bigint): never {
  const info = siginfoOrNull(tid);
  const faultAddr = info ? info.readBigUInt64LE(16) : undefined;
  const where = signal === pt.SIG.SIGSEGV || signal === pt.SIG.SIGBUS ? ` accessing ${hex(faultAddr ?? 0n)}` : '';
  return fail('EFAULT', `hook at ${hex(fn)} in process ${proc.pid} crashed with ${pt.signalName(signal)} at ${hex(rip)}${where}`);
}

/**
 * Registers for a call at `rip` with stack `sp`: SysV argument registers,
 * orig_rax -1 (no syscall restart on resume), DF clear as the ABI wants at
 * a call, TF cleared so a previous single-step cannot leak.
 */
function callRegs(saved: pt.Regs, rip: bigint, sp: bigint, args: (number | bigint)[]): pt.Regs {
  const a = [...args.map(toU64), 0n, 0n, 0n, 0n, 0n, 0n];
  return {
    ...saved,
    rip,
    rsp: sp,
    rax: 0n,
    orig_rax: toU64(-1),
    rdi: a[0]!,
    rsi: a[1]!,
    rdx: a[2]!,
    rcx: a[3]!,
    r8: a[4]!,
    r9: a[5]!,
    eflags: saved.eflags & ~(0x400n | 0x100n),
  };
}

/**
 * remoteCall through a stub in the runtime page: `movabs r11, fn; call r11;
 * mov rdi, rax; getpid` then the restore sequence. The thread runs under
 * PTRACE_SYSCALL (its own system calls stop and are continued); the
 * marker's syscall-entry stop at the stub's address ends the call.
 */
function callViaStub(
  proc: StoppedProcess,
  tid: number,
  page: bigint,
  fn: bigint,
  args: (number | bigint)[],
  timeoutMs: number,
): CallResult {
  const saved = pt.getRegs(tid);
  const at = stubSlot(page);
  const asm = new Asm()
    .movabs(ENC.r11!, fn)
    .u8(0x41, 0xff, 0xd3) // call *%r11
    .u8(0x48, 0x89, 0xc7) // mov %rax, %rdi
    .u8(0xb8, SYS.getpid, 0, 0, 0); // mov $getpid, %eax
  const marker = at + BigInt(asm.length) + 2n; // rip after the marker's syscall
  asm.u8(0x0f, 0x05);
  emitRestore(asm, saved);
  writeStub(proc, at, asm);
  pt.setOptions(tid, pt.PTRACE_O_TRACESYSGOOD);
  // rsp % 16 == 0 at the call instruction: 8 at the function's entry, as the ABI expects.
  const sp = (saved.rsp - 128n - CALL_GAP) & ~15n;
  const what = `the hook at ${hex(fn)}`;
  pt.setRegs(tid, callRegs(saved, at, sp, args));
  dieAt('call-setregs');
  let result: bigint | undefined;
  try {
    syscallStep(tid);
    const deadline = performance.now() + timeoutMs;
    while (result === undefined) {
      const st = waitAlive(proc, tid, deadline);
      if (!st) {
        reclaim(proc, tid, what);
        fail(
          'ETIMEDOUT',
          `hook at ${hex(fn)} in process ${proc.pid} did not return within ${timeoutMs} ms ` +
            `(it may wait for a lock held by another stopped thread)`,
        );
      }
      if (st.kind === 'exited' || st.kind === 'killed') exitedDuring(proc, tid, what);
      if (st.kind === 'signal' && st.signal === SYSCALL_TRAP) {
        const now = pt.getRegs(tid);
        if (now.rip === marker && now.orig_rax === BigInt(SYS.getpid) && now.rsp === sp) {
          dieAt('call-marker');
          result = now.rdi;
          parkAfterSyscallStop(proc, tid, marker, deadline + SYSCALL_TIMEOUT_MS, what);
          break;
        }
        dieAt('call-hook-syscall');
      } else if (st.kind === 'signal') {
        // Leave a crash signal undelivered (restarting from this stop with 0 drops it).
        if (isCrashSignal(st.signal)) hookCrashed(proc, tid, fn, st.signal, pt.getRegs(tid).rip);
        proc.owe(tid, st.signal, siginfoOrNull(tid));
      }
      syscallStep(tid);
    }
  } finally {
    restore(tid, saved);
  }
  const value = BigInt.asIntN(64, result);
  return { value, int: Number(BigInt.asIntN(32, result)) };
}
