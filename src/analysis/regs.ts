/**
 * Register sets for the analysis. Registers get small numbers so sets are
 * bit masks: general registers 0-15 in hardware order (rax rcx rdx rbx
 * rsp rbp rsi rdi r8-r15), vector registers 0-31 in a second mask. iced's
 * Register enum is mapped once into flat tables.
 */
import { onIced } from './iced.js';

export const GPR_NAMES = ['rax', 'rcx', 'rdx', 'rbx', 'rsp', 'rbp', 'rsi', 'rdi', 'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15'];

export const RAX = 0, RCX = 1, RDX = 2, RSP = 4, RBP = 5, RSI = 6, RDI = 7, R8 = 8, R9 = 9, R10 = 10, R11 = 11;

/** Caller-saved general registers of the SysV ABI: the only ones a caller can keep live across a call beyond the ABI. */
export const CALLER_SAVED_GPR = bits([RAX, RCX, RDX, RSI, RDI, R8, R9, R10, R11]);
/** xmm0-15: caller-saved vector registers (xmm16-31 too, but no SysV caller keeps those live: gcc never allocates them across calls). */
export const CALLER_SAVED_VEC = 0xffff;
/** Integer argument registers, and rax (the vector-register count of a varargs call). */
export const ARG_GPR = bits([RDI, RSI, RDX, RCX, R8, R9, RAX]);

export function bits(list: number[]): number {
  let m = 0;
  for (const r of list) m |= 1 << r;
  return m >>> 0;
}

/** A register set: general registers and vector registers. */
export interface RegSet {
  g: number;
  v: number;
}

export const EMPTY: RegSet = { g: 0, v: 0 };
export const ALL_CALLER_SAVED: RegSet = { g: CALLER_SAVED_GPR, v: CALLER_SAVED_VEC };

export function union(a: RegSet, b: RegSet): RegSet {
  return { g: (a.g | b.g) >>> 0, v: (a.v | b.v) >>> 0 };
}


/** Names of a set, general registers first ('rax', ..., 'xmm0', ...). */
export function setNames(s: RegSet): string[] {
  const out: string[] = [];
  for (let i = 0; i < 16; i++) if (s.g & (1 << i)) out.push(GPR_NAMES[i]!);
  for (let i = 0; i < 32; i++) if ((s.v >>> i) & 1) out.push(`xmm${i}`);
  return out;
}

/**
 * Kinds of register references. A general register is read or written as
 * its low byte, the legacy high byte (ah..bh), 16, 32 or 64 bits; a vector
 * register as xmm (16 bytes), ymm (32) or zmm (64).
 */
export const W8 = 1, WH8 = 3, W16 = 2, W32 = 4, W64 = 8;

/** Per iced Register value: general register number or -1. */
const GPR_OF = new Int8Array(256).fill(-1);
/** Per iced Register value: width code (W8..W64 for general registers; 16/32/64 for vectors). */
const WIDTH_OF = new Uint8Array(256);
/** Per iced Register value: vector register number or -1. */
const VEC_OF = new Int8Array(256).fill(-1);

onIced((iced) => {
  const R = iced.Register;
  for (let i = 0; i < 4; i++) { GPR_OF[R.AL + i] = i; WIDTH_OF[R.AL + i] = W8; }
  for (let i = 0; i < 4; i++) { GPR_OF[R.AH + i] = i; WIDTH_OF[R.AH + i] = WH8; }
  for (let i = 4; i < 16; i++) { GPR_OF[R.SPL + i - 4] = i; WIDTH_OF[R.SPL + i - 4] = W8; }
  for (let i = 0; i < 16; i++) {
    GPR_OF[R.AX + i] = i; WIDTH_OF[R.AX + i] = W16;
    GPR_OF[R.EAX + i] = i; WIDTH_OF[R.EAX + i] = W32;
    GPR_OF[R.RAX + i] = i; WIDTH_OF[R.RAX + i] = W64;
  }
  for (let i = 0; i < 32; i++) {
    VEC_OF[R.XMM0 + i] = i; WIDTH_OF[R.XMM0 + i] = 16;
    VEC_OF[R.YMM0 + i] = i; WIDTH_OF[R.YMM0 + i] = 32;
    VEC_OF[R.ZMM0 + i] = i; WIDTH_OF[R.ZMM0 + i] = 64;
  }
});

/** General register number (0-15) of an iced register, or -1. */
export function gprOf(reg: number): number {
  return reg >= 0 && reg < 256 ? GPR_OF[reg]! : -1;
}

/** Vector register number (0-31) of an iced register, or -1. */
export function vecOf(reg: number): number {
  return reg >= 0 && reg < 256 ? VEC_OF[reg]! : -1;
}

/** Width code of an iced register (see W8..W64; 16/32/64 bytes for vectors). */
export function widthOf(reg: number): number {
  return reg >= 0 && reg < 256 ? WIDTH_OF[reg]! : 0;
}
