/**
 * Does a function use its caller's stack frame (incoming stack arguments,
 * or the varargs overflow area)? A preserving veneer pushes onto the stack
 * before calling the replacement, which moves those arguments, so such a
 * function cannot get one.
 *
 * A walk over the function's code tracking which registers hold an
 * address relative to the stack pointer at entry (where [rsp] is the
 * return address, so offsets >= 8 are the caller's): rsp itself through
 * push/pop/sub/add/lea/leave, rbp after `mov rbp, rsp`, and copies made by
 * mov/lea. A memory operand or a `lea` reaching offset >= 8 answers true.
 * After `and rsp, -32` (realignment) or alloca rsp is only known to lie
 * below a bound; an rsp-based access that may reach above the return
 * address then is undecidable: 'unknown'.
 */
import { onIced, type Iced } from './iced.js';
import { FC, MN, OK, type CodeImage, type Insn } from './decode.js';
import type { FlowModel } from './flow.js';
import { CALLER_SAVED_GPR, gprOf, RBP, RSP } from './regs.js';

const MAX_VISITS = 50_000;
let REG!: Iced['Register'];
onIced((iced) => { REG = iced.Register; });

/** Registers 0-15 (entry-relative value or null), then UP: an upper bound of rsp once its value is lost to alloca or realignment. */
type Frame = (number | null)[];
const UP = 16;

export function stackArguments(code: CodeImage, flow: FlowModel, entry: number): boolean | 'unknown' {
  const fc = flow.of(entry);
  if (fc.problems.length && fc.list.length === 0) return 'unknown';
  const start: Frame = new Array<number | null>(17).fill(null);
  start[RSP] = 0;
  start[UP] = 0;
  // Dataflow to a fixpoint: the state at an instruction is the join of the
  // states reaching it (a register keeps its offset only when all agree),
  // so each instruction is revisited at most once per register lost.
  const at0 = new Map<number, Frame>();
  const work: [number, Frame][] = [[entry, start]];
  let lost = false;
  let visits = 0;
  while (work.length) {
    let [at, st] = work.pop()!;
    for (;;) {
      if (++visits > MAX_VISITS) return 'unknown';
      const old = at0.get(at);
      if (old) {
        let changed = false;
        for (let r = 0; r < 16; r++) {
          if (old[r] !== null && old[r] !== st[r]) {
            old[r] = null;
            changed = true;
          }
        }
        const up = old[UP] === null || st[UP] === null ? null : Math.max(old[UP]!, st[UP]!);
        if (up !== old[UP]) {
          old[UP] = up;
          changed = true;
        }
        if (!changed) break;
        st = [...old];
      } else at0.set(at, [...st]);
      const i = code.insn(at);
      if (!i) {
        lost = true;
        break;
      }
      const r = step(code, i, st);
      if (r === 'args') return true;
      if (r === 'lost') lost = true;
      let next = i.next;
      let stop = false;
      switch (i.flow) {
        case FC.Jcc:
          if (i.target >= 0 && fc.contains(i.target)) work.push([i.target, [...st]]);
          break;
        case FC.Jmp:
          if (i.target >= 0 && fc.contains(i.target)) next = i.target;
          else stop = true;
          break;
        case FC.IndirectJmp: {
          const k = flow.position(fc, at);
          const targets = k >= 0 ? flow.jumpTable(fc, k) : null;
          for (const t of targets ?? []) work.push([t, [...st]]);
          stop = true;
          break;
        }
        case FC.Call:
        case FC.IndirectCall:
          if (!flow.callReturns(i)) stop = true;
          break;
        case FC.Next:
        case FC.Xbegin:
          break;
        default:
          stop = true;
      }
      if (stop || !fc.contains(next)) break;
      at = next;
    }
  }
  return lost ? 'unknown' : false;
}

/** Apply one instruction to the frame; 'args' when it touches the caller's frame, 'lost' when it uses an rsp we lost. */
function step(code: CodeImage, i: Insn, st: Frame): 'args' | 'lost' | null {
  const rsp = st[RSP] ?? null;
  const up = st[UP] ?? null;
  const r = apply(code, i, st);
  if (st[RSP] !== null) st[UP] = st[RSP]!;
  else if (rsp !== null || up !== null) {
    const base = rsp ?? up!;
    if (i.mnemonic === MN.Push) st[UP] = base - 8;
    else if (i.mnemonic === MN.Pop) st[UP] = base + 8;
    else if ((i.mnemonic === MN.Sub || i.mnemonic === MN.Add) && i.op0Reg === REG.RSP && i.imm !== null) st[UP] = base + (i.mnemonic === MN.Add ? i.imm : -i.imm);
    // sub rsp, reg (alloca) and and rsp, -N (realignment) only move rsp down.
    else if ((i.mnemonic === MN.Sub && i.op0Reg === REG.RSP && i.op1Kind === OK.Register) || (i.mnemonic === MN.And && i.op0Reg === REG.RSP && i.imm !== null && i.imm < 0)) st[UP] = base;
    else if (i.flow !== FC.Call && i.flow !== FC.IndirectCall && i.kills.some((k) => k >> 7 === RSP)) st[UP] = null;
  }
  return r;
}

function apply(code: CodeImage, i: Insn, st: Frame): 'args' | 'lost' | null {
  let result: 'args' | 'lost' | null = null;
  const m = i.mem;
  const dst = i.op0Kind === OK.Register ? gprOf(i.op0Reg) : -1;
  const dstFull = i.op0Kind === OK.Register && (i.op0Reg >= REG.EAX && i.op0Reg <= REG.R15);
  if (m && m.base >= 0) {
    const b = st[m.base];
    if (b === null || b === undefined) {
      // rsp lost below a known bound (alloca, realignment): slots near it are still this frame's.
      const up = st[UP] ?? null;
      if (m.base === RSP && i.mnemonic !== MN.Lea && (up === null || m.index >= 0 || up + m.disp >= 8)) result = 'lost';
    } else if (b + m.disp >= 8) {
      if (i.mnemonic !== MN.Lea) return 'args';
      // lea of the caller's frame: va_start's overflow_arg_area, unless it is
      // the DRAP pointer gcc takes just before realigning rsp.
      const after = code.insn(i.next);
      const drap = after !== null && after.mnemonic === MN.And && after.op0Kind === OK.Register && after.op0Reg === REG.RSP;
      if (!drap) return 'args';
    }
  }
  // Calls preserve rsp (the callee pops its return address) and clobber caller-saved registers.
  if (i.flow === FC.Call || i.flow === FC.IndirectCall) {
    for (let r = 0; r < 16; r++) if (CALLER_SAVED_GPR & (1 << r)) st[r] = null;
    return result;
  }
  const rsp = st[RSP] ?? null;
  switch (i.mnemonic) {
    case MN.Push:
      st[RSP] = rsp === null ? null : rsp - 8;
      return result;
    case MN.Pop:
      st[RSP] = rsp === null ? null : rsp + 8;
      if (dst >= 0 && dst !== RSP) st[dst] = null;
      return result;
    case MN.Leave: {
      const bp = st[RBP] ?? null;
      st[RSP] = bp === null ? null : bp + 8;
      st[RBP] = null;
      return result;
    }
    case MN.Lea:
      if (dst >= 0 && m) {
        const b = m.base >= 0 ? st[m.base] ?? null : null;
        st[dst] = b !== null && m.index < 0 && dstFull ? b + m.disp : null;
      }
      return result;
    case MN.Mov:
      if (dst >= 0 && i.op1Kind === OK.Register) {
        const src = gprOf(i.op1Reg);
        st[dst] = src >= 0 && dstFull ? st[src] ?? null : null;
        return result;
      }
      break;
    case MN.Sub:
    case MN.Add:
      if (dst === RSP && i.imm !== null) {
        st[RSP] = rsp === null ? null : rsp + (i.mnemonic === MN.Add ? i.imm : -i.imm);
        return result;
      }
      break;
    default:
      break;
  }
  // Anything else that writes a tracked register loses it (and rsp then is lost: and/alloca).
  for (const k of i.kills) {
    const id = k >> 7;
    if (id < 16) st[id] = null;
  }
  for (let r = 0; r < 16; r++) if (i.mayWrite.g & (1 << r)) st[r] = null;
  return result;
}
