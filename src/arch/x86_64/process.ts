/**
 * The Linux x86-64 user-space ABI, for driving a stopped process: which
 * registers carry a system call or a call, the red zone, the kernel's
 * restart of interrupted system calls, and the self-restoring stubs.
 *
 * A stub is the operation itself followed by a restore sequence that puts
 * back every register of the thread from immediates and jumps to its
 * original rip. While hotstack lives it stops the thread between the two
 * and restores the registers with SETREGS, so the sequence never runs; if
 * hotstack is killed at any instant, the kernel detaches the thread, which
 * finishes the operation and restores itself.
 */
import type { BatchCall, BatchStub, ProcessAbi, Stub } from '../arch.js';
import { INT3 } from './insn.js';
import { REG_NAMES, type Regs } from './regs.js';

/** Linux x86-64 system call numbers used by remote operations. */
const SYS = { close: 3, mmap: 9, mprotect: 10, munmap: 11, getpid: 39, gettid: 186, tgkill: 234 } as const;

const RED_ZONE = 128n;
/** Stack space skipped below the red zone before a call frame, in case the thread was in a leaf function. */
const CALL_GAP = 256n;
/** Scratch stack of the restore sequence (for popfq), below the red zone. */
const RESTORE_SCRATCH = 64n;
const EFLAGS_TF = 0x100n;
const EFLAGS_DF = 0x400n;

const ERESTARTSYS = -512n;
const ERESTARTNOINTR = -513n;
const ERESTARTNOHAND = -514n;
const ERESTART_RESTARTBLOCK = -516n;
const NR_RESTART_SYSCALL = 219n;
const SYSCALL_LEN = 2n;

/** Register numbers as instructions encode them. */
const ENC = {
  rax: 0, rcx: 1, rdx: 2, rbx: 3, rsp: 4, rbp: 5, rsi: 6, rdi: 7,
  r8: 8, r9: 9, r10: 10, r11: 11, r12: 12, r13: 13, r14: 14, r15: 15,
} as const;

/** Just enough of an assembler for the stubs. */
class Asm {
  readonly bytes: number[] = [];
  u8(...b: number[]): this {
    this.bytes.push(...b);
    return this;
  }
  u64(v: bigint): this {
    // Two BigInt operations instead of sixteen: a stub holds about twenty of these.
    const x = BigInt.asUintN(64, v);
    return this.u32(Number(x & 0xffffffffn)).u32(Number(x >> 32n));
  }
  u32(x: number): this {
    this.bytes.push(x & 0xff, (x >>> 8) & 0xff, (x >>> 16) & 0xff, (x >>> 24) & 0xff);
    return this;
  }
  /** movabs reg, imm64. */
  movabs(reg: keyof typeof ENC, v: bigint): this {
    const n = ENC[reg];
    return this.u8(n >= 8 ? 0x49 : 0x48, 0xb8 + (n & 7)).u64(v);
  }
  /** The shortest move of `v` into `reg`: zero-extended imm32, sign-extended imm32, or movabs. */
  mov(reg: keyof typeof ENC, v: bigint): this {
    const n = ENC[reg];
    const x = BigInt.asUintN(64, v);
    if (x <= 0xffffffffn) {
      if (n >= 8) this.u8(0x41);
      return this.u8(0xb8 + (n & 7)).u32(Number(x));
    }
    const s = BigInt.asIntN(64, v);
    if (s >= -0x80000000n && s < 0) {
      return this.u8(n >= 8 ? 0x49 : 0x48, 0xc7, 0xc0 + (n & 7)).u32(Number(s) >>> 0);
    }
    return this.movabs(reg, v);
  }
  /** mov %src, %dst (64-bit). */
  movReg(dst: keyof typeof ENC, src: keyof typeof ENC): this {
    const d = ENC[dst];
    const s = ENC[src];
    return this.u8(0x48 | (s >= 8 ? 4 : 0) | (d >= 8 ? 1 : 0), 0x89, 0xc0 | ((s & 7) << 3) | (d & 7));
  }
  syscall(): this {
    return this.u8(0x0f, 0x05);
  }
  get length(): number {
    return this.bytes.length;
  }
}

const u64 = (v: bigint): bigint => BigInt.asUintN(64, v);

/** Where a batch that ends with a signal keeps its results: registers no system call takes or clobbers. */
const RESULT_REGS = ['rbx', 'rbp', 'r12', 'r13', 'r14', 'r15'] as const;

/** Six argument registers' values: `args` padded with zeros. */
function six(args: bigint[]): bigint[] {
  return [...args.map(u64), 0n, 0n, 0n, 0n, 0n, 0n];
}

function selfRestoredRegs(saved: Regs): Regs {
  const r = { ...saved };
  const nr = BigInt.asIntN(64, saved.orig_rax);
  const ret = BigInt.asIntN(64, saved.rax);
  if (nr >= 0n) {
    if (ret === ERESTARTSYS || ret === ERESTARTNOINTR || ret === ERESTARTNOHAND) {
      r.rax = saved.orig_rax;
      r.rip = saved.rip - SYSCALL_LEN;
    } else if (ret === ERESTART_RESTARTBLOCK) {
      r.rax = NR_RESTART_SYSCALL;
      r.rip = saved.rip - SYSCALL_LEN;
    }
  }
  return r;
}

/**
 * rflags through a scratch stack below the red zone, every general register
 * from an immediate, rsp last (mov does not touch flags), then an absolute
 * jump to the original rip.
 */
function emitRestore(a: Asm, saved: Regs): void {
  const r = selfRestoredRegs(saved);
  a.movabs('rsp', (r.rsp - RED_ZONE - RESTORE_SCRATCH) & ~15n);
  a.movabs('rax', r.eflags & ~EFLAGS_TF);
  a.u8(0x50); // push rax
  a.u8(0x9d); // popfq
  for (const n of ['rax', 'rcx', 'rdx', 'rbx', 'rbp', 'rsi', 'rdi', 'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15'] as const) {
    a.movabs(n, r[n]);
  }
  a.movabs('rsp', r.rsp);
  a.u8(0xff, 0x25, 0, 0, 0, 0).u64(r.rip); // jmp *0(%rip)
}

function stub(a: Asm, endOffset: number, saved: Regs): Stub {
  emitRestore(a, saved);
  return { bytes: Uint8Array.from(a.bytes), endOffset };
}

/** Linux x86-64 process ABI. */
export const x86_64Process: ProcessAbi<Regs> = {
  regNames: REG_NAMES,
  pc: (r) => r.rip,
  sp: (r) => r.rsp,
  trapByte: INT3,
  syscallInsn: Uint8Array.of(0x0f, 0x05),
  sys: SYS,

  syscallRegs(saved, at, nr, args) {
    const a = six(args);
    // orig_rax -1: if the thread was stopped inside a blocking system call, the
    // kernel's restart logic must not rewind rip onto our syscall instruction.
    return { ...saved, rip: at, rax: u64(nr), orig_rax: u64(-1n), rdi: a[0]!, rsi: a[1]!, rdx: a[2]!, r10: a[3]!, r8: a[4]!, r9: a[5]!, eflags: saved.eflags & ~EFLAGS_TF };
  },
  syscallReturn: (r) => r.rax,

  callRegs(saved, pc, sp, args) {
    const a = six(args);
    // DF clear as the ABI wants at a call; TF cleared so a previous single-step cannot leak.
    return {
      ...saved, rip: pc, rsp: sp, rax: 0n, orig_rax: u64(-1n),
      rdi: a[0]!, rsi: a[1]!, rdx: a[2]!, rcx: a[3]!, r8: a[4]!, r9: a[5]!,
      eflags: saved.eflags & ~(EFLAGS_DF | EFLAGS_TF),
    };
  },
  // rsp % 16 == 8 at the function's entry, as after a call: a pushed return
  // address makes it so, or the stub's own call instruction does.
  callFrame: (saved, withReturn) => ((saved.rsp - RED_ZONE - CALL_GAP) & ~15n) - (withReturn ? 8n : 0n),
  callReturn: (r) => r.rax,

  selfRestoredRegs,

  batchResultRegs: RESULT_REGS.length,

  batchStub(calls: BatchCall[], saved: Regs, endSignal?: number): BatchStub {
    if (endSignal !== undefined && calls.length > RESULT_REGS.length) throw new Error(`internal: a batch that ends with a signal runs at most ${RESULT_REGS.length} calls`);
    const a = new Asm();
    const ends: number[] = [];
    const skips: number[] = [];
    calls.forEach((c, k) => {
      const v = six(c.args);
      a.mov('rax', c.nr);
      (['rdi', 'rsi', 'rdx', 'r10', 'r8', 'r9'] as const).forEach((r, i) => {
        if (i < c.args.length) a.mov(r, v[i]!);
      });
      a.syscall();
      ends.push(a.length);
      // Nobody stops the thread between calls: each result waits in a register we restore anyway.
      if (endSignal !== undefined) a.movReg(RESULT_REGS[k]!, 'rax');
      // rcx is the system call's to clobber: compare through it, and skip the rest on a surprise.
      a.mov('rcx', c.expect).u8(0x48, 0x39, 0xc8); // cmp %rcx, %rax
      a.u8(0x0f, 0x85, 0, 0, 0, 0); // jne over the rest
      skips.push(a.length);
    });
    const restAt = a.length;
    for (const end of skips) {
      const rel = restAt - end;
      for (let i = 0; i < 4; i++) a.bytes[end - 4 + i] = (rel >> (8 * i)) & 0xff;
    }
    let signalEnd: number | undefined;
    if (endSignal !== undefined) {
      // tgkill(getpid(), gettid(), sig): ids as the thread's own PID namespace numbers them.
      a.mov('rax', BigInt(SYS.getpid)).syscall().movReg('rdi', 'rax');
      a.mov('rax', BigInt(SYS.gettid)).syscall().movReg('rsi', 'rax');
      a.mov('rdx', BigInt(endSignal)).mov('rax', BigInt(SYS.tgkill)).syscall();
      signalEnd = a.length;
    }
    emitRestore(a, saved);
    return { bytes: Uint8Array.from(a.bytes), ends, signalEnd };
  },

  batchResults: (r, n) => RESULT_REGS.slice(0, n).map((k) => r[k]),

  batchRegs(saved, at) {
    return { ...saved, rip: at, orig_rax: u64(-1n), eflags: saved.eflags & ~EFLAGS_TF };
  },

  callStub(fn, saved) {
    const a = new Asm()
      .movabs('r11', fn)
      .u8(0x41, 0xff, 0xd3) // call *%r11
      .u8(0x48, 0x89, 0xc7) // mov %rax, %rdi: the result survives the marker
      .u8(0xb8, SYS.getpid, 0, 0, 0) // mov $getpid, %eax
      .syscall();
    return stub(a, a.length, saved);
  },

  callMarker(r, sp) {
    return r.orig_rax === BigInt(SYS.getpid) && r.rsp === sp ? r.rdi : undefined;
  },
};
