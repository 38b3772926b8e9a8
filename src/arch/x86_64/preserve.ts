/**
 * Preserving veneers. Callers compiled with gcc's -fipa-ra may keep values
 * in caller-saved registers across a call when they know the callee does
 * not touch them. A replacement compiled on its own obeys only the ABI, so
 * the old function's entry jumps to a veneer that saves exactly those
 * registers, calls the replacement, restores them and returns to the caller.
 *
 * The veneer calls (rather than jumps to) the replacement, so it shifts
 * the stack by its own frame: functions that read arguments from the
 * caller's stack must not get one (the analysis says which).
 */

import type { KeptRegister } from '../arch.js';

const GPR: Record<string, number> = {
  rax: 0, rcx: 1, rdx: 2, rsi: 6, rdi: 7, r8: 8, r9: 9, r10: 10, r11: 11,
};

/** Registers a veneer can keep: the caller-saved ones (callee-saved ones are kept by the replacement itself). */
export function isPreservable(name: string): boolean {
  return name in GPR || /^xmm([0-9]|1[0-5])$/.test(name);
}

function push(r: number): number[] {
  return r < 8 ? [0x50 + r] : [0x41, 0x50 + (r - 8)];
}

function pop(r: number): number[] {
  return r < 8 ? [0x58 + r] : [0x41, 0x58 + (r - 8)];
}

function i32(v: number): number[] {
  return [v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff];
}

/** [rsp+disp32] with register field `reg` (low 3 bits). */
function rspDisp(reg: number, disp: number): number[] {
  return [0x84 | ((reg & 7) << 3), 0x24, ...i32(disp)];
}

/** movdqu / vmovdqu / vmovdqu64 between vector register `n` and [rsp+disp]. */
function vecMove(n: number, width: number, disp: number, store: boolean): number[] {
  const op = store ? 0x7f : 0x6f;
  if (width <= 16) return [0xf3, ...(n >= 8 ? [0x44] : []), 0x0f, op, ...rspDisp(n, disp)];
  if (width <= 32) return [0xc5, n >= 8 ? 0x7e : 0xfe, op, ...rspDisp(n, disp)];
  // EVEX.512.F3.0F.W1: R (inverted) in P0 bit 7; disp32 is not scaled.
  return [0x62, n >= 8 ? 0x71 : 0xf1, 0xfe, 0x48, op, ...rspDisp(n, disp)];
}

/**
 * Encode a veneer placed at `at` that keeps `regs` across a call to `target`.
 * Throws (a plain Error: a caller bug) for a register it cannot keep or a
 * target beyond rel32 reach; callers check both first.
 */
export function encodePreservingVeneer(at: bigint, target: bigint, regs: KeptRegister[]): Uint8Array {
  const gprs = regs.filter((r) => r.name in GPR).map((r) => GPR[r.name]!);
  const vecs = regs
    .filter((r) => !(r.name in GPR))
    .map((r) => {
      if (!isPreservable(r.name)) throw new Error(`cannot keep register ${r.name}`);
      return { n: Number(r.name.slice(3)), width: r.width <= 16 ? 16 : r.width <= 32 ? 32 : 64 };
    });
  const code: number[] = [];
  for (const r of gprs) code.push(...push(r));
  // At entry rsp = 8 (mod 16); the call needs rsp = 0 (mod 16).
  let frame = 0;
  const slots: number[] = [];
  for (const v of vecs) {
    slots.push(frame);
    frame += v.width;
  }
  if ((gprs.length + 1 + frame / 8) % 2 !== 0) frame += 8;
  if (frame) code.push(0x48, 0x81, 0xec, ...i32(frame));
  vecs.forEach((v, i) => code.push(...vecMove(v.n, v.width, slots[i]!, true)));
  const callAt = at + BigInt(code.length);
  const rel = target - (callAt + 5n);
  if (rel < -0x80000000n || rel > 0x7fffffffn) throw new Error('veneer target out of rel32 reach');
  code.push(0xe8, ...i32(Number(BigInt.asIntN(32, rel))));
  vecs.forEach((v, i) => code.push(...vecMove(v.n, v.width, slots[i]!, false)));
  if (frame) code.push(0x48, 0x81, 0xc4, ...i32(frame));
  for (const r of [...gprs].reverse()) code.push(...pop(r));
  code.push(0xc3);
  return Uint8Array.from(code);
}
