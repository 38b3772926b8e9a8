/**
 * The seam between the engine and one instruction set, in the style of
 * Xen's `arch_livepatch_*` hooks: the engine, the payload checks and the
 * process target ask an `Arch` for every encoding, relocation type and
 * register; only an implementation (src/arch/x86_64) knows the bytes.
 */

/** How a relocation computes its field (the arch maps ELF types onto these). */
export type RelocKind = 'none' | 'abs64' | 'abs32' | 'abs32s' | 'pc32' | 'plt32' | 'pc64' | 'gotpc32';

/** A register a preserving veneer keeps: a general register by its full-width name, or a vector register with the width callers read. */
export interface KeptRegister {
  name: string;
  /** 8 for general registers; 16, 32 or 64 for 128-, 256- or 512-bit vector registers. */
  width: number;
}

/** What the engine needs from an instruction set to patch functions (Xen's arch_livepatch_* hooks). */
export interface PatchArch {
  /** ELF `e_machine` of objects this implementation patches. */
  readonly machine: number;
  /** Name for messages ("x86-64"). */
  readonly name: string;
  /** Bytes a jump patch writes at a function's entry. */
  readonly jumpLen: number;
  /** The landing pad a patch keeps in front of the jump (CET's endbr64), for messages and size rules. */
  readonly landingPad: { name: string; length: number };
  /** Bytes at the entry of a function starting with `code` that the patch leaves in place (its landing pad), 0 when none. */
  patchOffset(code: Uint8Array): number;
  /** Whether a displacement reaches as far as a direct jump or call does. */
  branchReaches(displacement: bigint): boolean;
  /** The jump patch placed at `from` that goes to `to`; the caller checks the reach. */
  encodeJump(from: bigint, to: bigint): Uint8Array;
  /** Where a jump patch at `from` goes, or undefined when `bytes` are not one. */
  jumpTarget(from: bigint, bytes: Uint8Array): bigint | undefined;
  /** `len` bytes of no-ops, for NOP patches. */
  encodeNops(len: number): Uint8Array;
  /** Length of an absolute veneer (a jump to any address). */
  readonly veneerLen: number;
  /** An absolute veneer to `target`, for calls out of reach of a direct call. */
  encodeVeneer(target: bigint): Uint8Array;
  /** Whether a preserving veneer can keep register `name` across the replacement. */
  canKeep(name: string): boolean;
  /** How a kept register is named at the width it is kept (xmm0 kept at 32 bytes is ymm0). */
  keptName(r: KeptRegister): string;
  /** A veneer at `at` that keeps `regs` across a call to `target` (both checked by the caller). */
  encodePreservingVeneer(at: bigint, target: bigint, regs: KeptRegister[]): Uint8Array;
  /** How an ELF relocation type is computed, undefined when unsupported. */
  relocKind(type: number): RelocKind | undefined;
  /** Bytes a relocation kind writes. */
  relocWidth(kind: RelocKind): number;
  /** Name of an ELF relocation type for messages. */
  relocName(type: number): string;
  /** True for the relocation types of thread-local storage (to say why one is refused). */
  isTlsReloc(type: number): boolean;
  /** Compute relocation `kind` (`value` is S+A, G included for GOT kinds; `place` is P) into `buf` at `off`; EOVERFLOW names `what`. */
  writeReloc(buf: Uint8Array, off: number, kind: RelocKind, value: bigint, place: bigint, what: string): void;
}

/** A self-restoring operation stub: its code and where, relative to its start, its end marker stops. */
export interface Stub {
  bytes: Uint8Array;
  /** Offset of the instruction after the system call that ends the operation. */
  endOffset: number;
}

/** One system call of a batch stub: its number, arguments, and the result that lets the batch go on. */
export interface BatchCall {
  nr: bigint;
  args: bigint[];
  /** The batch stops after this call unless it returns exactly this. */
  expect: bigint;
}

/**
 * A stub running several system calls: `ends[i]` is the offset after call
 * i's system call instruction; `signalEnd`, for a batch that ends with a
 * signal, the offset after the system call that sends it.
 */
export interface BatchStub {
  bytes: Uint8Array;
  ends: number[];
  signalEnd?: number;
}

/**
 * The Linux user-space ABI of the instruction set, for a target that drives
 * a process through ptrace: register layout, system calls, calls, and the
 * stubs that make a remote operation survive a killed hotstack.
 */
export interface ProcessAbi<R> {
  /** Names of the registers in the order of the kernel's `user_regs_struct`. */
  readonly regNames: readonly (keyof R & string)[];
  /** Instruction pointer and stack pointer. */
  pc(r: R): bigint;
  sp(r: R): bigint;
  /** One-byte breakpoint, the return trap of calls made without a stub. */
  readonly trapByte: number;
  /** The system call instruction (to find one in the target to borrow). */
  readonly syscallInsn: Uint8Array;
  /** System call numbers. */
  readonly sys: { mmap: number; munmap: number; mprotect: number; getpid: number; gettid: number; close: number; tgkill: number };
  /** Registers that run system call `nr(args)` at `at` (a system call instruction), no restart of an interrupted call. */
  syscallRegs(saved: R, at: bigint, nr: bigint, args: bigint[]): R;
  /** The raw return value at the stop after a system call. */
  syscallReturn(r: R): bigint;
  /** Registers that call the function at `pc` with `args`, stack at `sp` (its return address already there when called without a stub). */
  callRegs(saved: R, pc: bigint, sp: bigint, args: bigint[]): R;
  /** The stack pointer of a call frame below `saved`'s red zone: `withReturn` when the caller pushes the return address itself. */
  callFrame(saved: R, withReturn: boolean): bigint;
  /** The return value at the trap after a call made without a stub. */
  callReturn(r: R): bigint;
  /** Registers the thread must get back when nobody will set them: `saved` with the kernel's restart of an interrupted system call applied. */
  selfRestoredRegs(saved: R): R;
  /**
   * A stub that runs `calls` in order, their arguments as immediates,
   * skipping the rest once one returns other than its `expect`, then
   * restores `saved` and jumps back. Entered with `batchRegs`.
   *
   * With `endSignal`, the thread runs the calls without stopping (at most
   * `batchResultRegs` of them, each result kept in a register, see
   * batchResults) and then sends itself that signal: a traced thread stops
   * for it, an untraced one (hotstack killed) ignores it, when the signal
   * is one the thread neither blocks nor catches and whose default action
   * is to ignore it.
   */
  batchStub(calls: BatchCall[], saved: R, endSignal?: number): BatchStub;
  /** How many calls a batch that ends with a signal can run. */
  readonly batchResultRegs: number;
  /** The results of the first `n` calls of a batch that ended with a signal, at its stop. */
  batchResults(r: R, n: number): bigint[];
  /** Registers that enter a batch stub at `at` (no restart of an interrupted call). */
  batchRegs(saved: R, at: bigint): R;
  /** A stub that calls `fn` (set up by callRegs), stops at a getpid marker, then restores `saved` and jumps back. */
  callStub(fn: bigint, saved: R): Stub;
  /** Whether a syscall-entry stop is the call stub's end marker (frame `sp`), and the call's return value there. */
  callMarker(r: R, sp: bigint): bigint | undefined;
}

/** An instruction set: patching, and its Linux process ABI. */
export interface Arch<R> extends PatchArch {
  readonly process: ProcessAbi<R>;
}
