/**
 * Register reliance: after `call f`, which registers does the caller read
 * before writing them? Those it keeps live across the call because it
 * knows f leaves them alone (gcc's -fipa-ra); a replacement of f must
 * preserve them too.
 *
 * A forward walk over the caller's code from the return address, over
 * (address, state) pairs: the state says, per candidate register, how much
 * of it has been written since the call (low byte, low 16 bits, all of a
 * general register; low 128 bits / upper bits of a vector register), and
 * what al holds (the vector-argument count of a varargs call). A read of
 * bits not yet written is reliance. Calls inside the walk: a known
 * function reads what it reads before writing (its own live-in, walked
 * the same way) and kills what it may write; unknown code (PLT, pointer)
 * reads the argument registers and kills every caller-saved register.
 *
 * Where the walk leaves the caller (ret, tail jump), registers still
 * unwritten reach the caller's own callers: the walk reports them
 * (`atReturn`) and `Reliance` intersects them with what those callers rely
 * on, to a fixpoint over the call graph.
 */
import { FC, MN, OK, UPPER, VEC_ID, type CodeImage, type Insn } from './decode.js';
import type { Clobbers } from './clobbers.js';
import type { FlowModel, FunctionCode } from './flow.js';
import type { FunctionTable } from './functions.js';
import { onIced } from './iced.js';
import { ARG_GPR, CALLER_SAVED_GPR, CALLER_SAVED_VEC, gprOf, RAX, W16, W32, W64, W8, WH8, widthOf, type RegSet } from './regs.js';
import { ARG_ORDER, callReads, TRACKED_ARGS, UNKNOWN_CALL } from './prototypes.js';

/** Instructions visited per walk before giving up (then everything still possible is reported). */
export const MAX_VISITS = 20_000;

/** Registers with widths: general registers as a mask, vectors 0-15 with the widest read (0: none). */
export interface Relied {
  g: number;
  vw: number[];
}

export const noneRelied = (): Relied => ({ g: 0, vw: new Array<number>(16).fill(0) });


/** a ∪= b; true when a grew. */
export function mergeRelied(a: Relied, b: Relied): boolean {
  let grew = false;
  const g = (a.g | b.g) >>> 0;
  if (g !== a.g) { a.g = g; grew = true; }
  for (let i = 0; i < 16; i++) if (b.vw[i]! > a.vw[i]!) { a.vw[i] = b.vw[i]!; grew = true; }
  return grew;
}

/** The part of `r` in register set `s`. */
export function reliedWithin(r: Relied, s: RegSet): Relied {
  return { g: (r.g & s.g) >>> 0, vw: r.vw.map((w, i) => ((s.v >>> i) & 1 ? w : 0)) };
}

export interface WalkResult {
  relied: Relied;
  /** Registers still holding their pre-call value where the walk left the caller (ret, tail jump). */
  atReturn: RegSet;
  /** Why the result is a conservative guess, if it is. */
  incomplete: string | null;
}

interface State {
  k1: number;
  k2: number;
  kF: number;
  vL: number;
  vH: number;
  al: number;
  /** Addresses held by the first TRACKED_ARGS integer argument registers (rip-relative lea, absolute mov), -1 unknown: printf formats. */
  p: number[];
}

let AL_REGS!: Set<number>;
onIced((iced) => {
  const R = iced.Register;
  AL_REGS = new Set<number>([R.AL, R.EAX, R.RAX]);
});

export class Walker {
  private readonly liveIns = new Map<number, Relied>();
  private readonly inProgress = new Set<number>();
  private readonly provisional = new Map<number, Relied>();
  private consulted = new Set<number>();
  private readonly tentative = new Map<number, Relied>();

  constructor(
    private readonly code: CodeImage,
    private readonly flow: FlowModel,
    private readonly clobbers: Clobbers,
  ) {}

  /** Walk from `start` (the instruction after a call) with `alive` the candidate registers; `entry` the caller's entry or -1. */
  afterCall(start: number, alive: RegSet, entry: number): WalkResult {
    return this.walk(start, alive, entry >= 0 ? this.flow.of(entry) : null, true);
  }

  /**
   * Registers the function entered at `entry` reads before writing them
   * (its arguments, in effect). Recursion is solved as a least fixpoint:
   * a call back into a function being computed reads what has been found
   * so far, and the walk repeats until that stops growing.
   */
  liveIn(entry: number): Relied {
    const hit = this.liveIns.get(entry) ?? this.tentative.get(entry);
    if (hit) return hit;
    if (this.flow.external(entry)) return argRegs(-1);
    if (this.inProgress.has(entry)) {
      this.consulted.add(entry);
      return this.provisional.get(entry) ?? noneRelied();
    }
    const top = this.inProgress.size === 0;
    this.inProgress.add(entry);
    const outer = this.consulted;
    const r = noneRelied();
    let cyclic = false;
    for (let round = 0; round < 16; round++) {
      if (top) this.tentative.clear(); // each round of the outermost fixpoint recomputes the functions inside the cycle
      this.consulted = new Set();
      this.provisional.set(entry, r);
      const next = this.walk(entry, { g: CALLER_SAVED_GPR, v: CALLER_SAVED_VEC }, this.flow.of(entry), false).relied;
      const self = this.consulted.delete(entry);
      for (const e of this.consulted) outer.add(e);
      cyclic ||= this.consulted.size > 0;
      const grew = mergeRelied(r, next);
      if (!self || !grew) break;
    }
    this.consulted = outer;
    this.inProgress.delete(entry);
    this.provisional.delete(entry);
    // A value that leaned on another function still being computed is only
    // kept until the outermost computation finishes its round.
    if (!cyclic) this.liveIns.set(entry, r);
    else this.tentative.set(entry, r);
    if (top) this.tentative.clear();
    return r;
  }

  /** What a call or jump out of the object at `i` reads, from the imported function's name (prototypes.ts). */
  private externalReads(i: Insn, s: State): Relied {
    const c = callReads(this.flow.importedName(i), (k) => s.p[k] ?? -1, (at) => this.code.cString(at));
    if (c === UNKNOWN_CALL) return argRegs(s.al);
    const r = noneRelied();
    r.g = c.g;
    const n = c.vec >= 0 ? c.vec : s.al >= 0 && s.al <= 8 ? s.al : 8;
    for (let k = 0; k < n && k < 8; k++) r.vw[k] = 16;
    return r;
  }

  private walk(start: number, alive: RegSet, fn: FunctionCode | null, trackReturn: boolean): WalkResult {
    const relied = noneRelied();
    let atG = 0, atV = 0;
    let incomplete: string | null = null;
    const init: State = { k1: ~alive.g & 0xffff, k2: ~alive.g & 0xffff, kF: ~alive.g & 0xffff, vL: ~alive.v & 0xffff, vH: ~alive.v & 0xffff, al: -1, p: NO_CONSTANTS };
    const seen = new Map<number, State>();
    const work: [number, State][] = [[start, init]];
    let visits = 0;
    const inside = (t: number): boolean => (fn ? fn.contains(t) : true);
    const aliveG = (s: State): number => ~s.kF & 0xffff;
    const aliveV = (s: State): number => ~(s.vL & s.vH) & 0xffff;
    const relyAll = (s: State): void => {
      relied.g |= aliveG(s);
      for (let i = 0; i < 16; i++) {
        if (!(s.vL & (1 << i))) relied.vw[i] = Math.max(relied.vw[i]!, 16);
        else if (!(s.vH & (1 << i))) relied.vw[i] = Math.max(relied.vw[i]!, 32);
      }
    };
    const readSet = (s: State, r: Relied): void => {
      for (let i = 0; i < 16; i++) if (r.g & (1 << i)) readReg(s, i, W64);
      for (let i = 0; i < 16; i++) if (r.vw[i]) readReg(s, VEC_ID + i, r.vw[i]!);
    };
    const readReg = (s: State, id: number, w: number): void => {
      if (id < VEC_ID) {
        const bit = 1 << id;
        const covered = w === W8 ? s.k1 : w === WH8 || w === W16 ? s.k2 : s.kF;
        if (!(covered & bit)) {
          relied.g |= bit;
          s.k1 |= bit; s.k2 |= bit; s.kF |= bit; // known now: no need to follow it further
        }
        return;
      }
      const n = id - VEC_ID;
      if (n >= 16) return;
      const bit = 1 << n;
      if (!(s.vL & bit) || (w > 16 && !(s.vH & bit))) relied.vw[n] = Math.max(relied.vw[n]!, w);
    };
    const kill = (s: State, id: number, w: number): void => {
      if (id < VEC_ID) {
        const bit = 1 << id;
        if (w === W8) s.k1 |= bit;
        else if (w === W16) { s.k1 |= bit; s.k2 |= bit; } else if (w === W32 || w === W64) { s.k1 |= bit; s.k2 |= bit; s.kF |= bit; }
        return;
      }
      const n = id - VEC_ID;
      if (n >= 16) return;
      const bit = 1 << n;
      if (w === UPPER) s.vH |= bit;
      else if (w === 16) s.vL |= bit;
      else { s.vL |= bit; s.vH |= bit; }
    };
    const killSet = (s: State, c: RegSet): void => {
      s.k1 |= c.g; s.k2 |= c.g; s.kF |= c.g;
      s.vL |= c.v & 0xffff; s.vH |= c.v & 0xffff;
      if (c.g & (1 << RAX)) s.al = -1;
      if (c.g & ARG_GPR) s.p = NO_CONSTANTS;
    };
    /** Control leaves the caller for `t`: what t reads is relied on; what passes through t returns to our callers. */
    const tailOut = (s: State, t: number, via: Insn | null): void => {
      if (t < 0 || this.flow.external(t)) {
        readSet(s, via ? this.externalReads(via, s) : argRegs(s.al));
        return;
      }
      readSet(s, this.liveIn(t));
      if (trackReturn) {
        const c = this.clobbers.of(t);
        atG |= aliveG(s) & ~c.g;
        atV |= aliveV(s) & ~c.v;
      }
    };

    while (work.length) {
      let [at, s] = work.pop()!;
      for (;;) {
        if (visits >= MAX_VISITS) {
          incomplete ??= `walk from 0x${this.code.toAddr(start).toString(16)} visited more than ${MAX_VISITS} instructions`;
          relyAll(init);
          work.length = 0;
          break;
        }
        if ((aliveG(s) | aliveV(s)) === 0) break; // nothing left to learn on this path
        // Join with what reached this instruction before: a register is unwritten if it is on some
        // path (each register's question is independent, so this loses nothing); stop when nothing new.
        const old = seen.get(at);
        if (old) {
          const j: State = {
            k1: old.k1 & s.k1, k2: old.k2 & s.k2, kF: old.kF & s.kF, vL: old.vL & s.vL, vH: old.vH & s.vH,
            al: old.al === s.al ? s.al : -1,
            p: joinConstants(old.p, s.p),
          };
          if (j.k1 === old.k1 && j.k2 === old.k2 && j.kF === old.kF && j.vL === old.vL && j.vH === old.vH && j.al === old.al && j.p === old.p) break;
          s = j;
        }
        seen.set(at, { ...s });
        visits++;
        const i = this.code.insn(at);
        if (!i) {
          incomplete ??= `code at 0x${this.code.toAddr(at).toString(16)} does not decode`;
          relyAll(s);
          break;
        }
        for (const r of i.reads) readReg(s, r >> 7, r & 0x7f);
        for (const k of i.kills) kill(s, k >> 7, k & 0x7f);
        trackAl(s, i);
        trackConstants(s, i, this.code);
        let nextAt = i.next;
        let stop = false;
        switch (i.flow) {
          case FC.Next:
          case FC.Xbegin:
            break;
          case FC.Call:
            if (i.target < 0 || this.flow.external(i.target)) {
              readSet(s, this.externalReads(i, s));
              killSet(s, { g: CALLER_SAVED_GPR, v: CALLER_SAVED_VEC });
            } else {
              readSet(s, this.liveIn(i.target));
              killSet(s, this.clobbers.of(i.target));
            }
            if (!this.flow.callReturns(i)) stop = true;
            break;
          case FC.IndirectCall:
            readSet(s, this.externalReads(i, s));
            killSet(s, { g: CALLER_SAVED_GPR, v: CALLER_SAVED_VEC });
            if (!this.flow.callReturns(i)) stop = true;
            break;
          case FC.Jcc:
            if (i.target >= 0 && inside(i.target)) work.push([i.target, { ...s }]);
            else tailOut({ ...s }, i.target, i);
            break;
          case FC.Jmp:
            if (i.target >= 0 && inside(i.target)) nextAt = i.target;
            else {
              tailOut(s, i.target, i);
              stop = true;
            }
            break;
          case FC.IndirectJmp: {
            const k = fn ? this.flow.position(fn, at) : -1;
            const targets = fn && k >= 0 ? this.flow.jumpTable(fn, k) : null;
            if (targets === null) tailOut(s, -1, i);
            else if (targets.length === 0) {
              incomplete ??= `jump table at 0x${this.code.toAddr(at).toString(16)} could not be read`;
              relyAll(s);
            } else for (const t of targets) work.push([t, { ...s }]);
            stop = true;
            break;
          }
          case FC.Ret:
            if (trackReturn) {
              atG |= aliveG(s);
              atV |= aliveV(s);
            }
            stop = true;
            break;
          default: // int3, ud2, hlt...: the path ends
            stop = true;
            break;
        }
        if (stop) break;
        if (fn && !inside(nextAt)) break; // ran off the end of the caller
        at = nextAt;
      }
    }
    return { relied, atReturn: { g: atG >>> 0, v: atV >>> 0 }, incomplete };
  }
}

const NO_CONSTANTS: number[] = new Array<number>(TRACKED_ARGS).fill(-1);

function joinConstants(a: number[], b: number[]): number[] {
  if (a === b) return a;
  let same = true;
  for (let k = 0; k < TRACKED_ARGS; k++) if (a[k] !== b[k]) same = false;
  return same ? a : a.map((x, k) => (x === b[k] ? x : -1));
}

/** Addresses loaded into argument registers: `lea reg, [rip+X]`, or `mov reg, imm` in an executable (non-PIE). */
function trackConstants(s: State, i: Insn, code: CodeImage): void {
  if (!(i.mayWrite.g & ARG_GPR)) return;
  let p: number[] | null = null;
  for (let k = 0; k < TRACKED_ARGS; k++) {
    const r = ARG_ORDER[k]!;
    if (!(i.mayWrite.g & (1 << r))) continue;
    let v = -1;
    if (i.op0Kind === OK.Register && gprOf(i.op0Reg) === r && widthOf(i.op0Reg) >= W32) {
      if (i.mnemonic === MN.Lea && i.ripTarget >= 0) v = i.ripTarget;
      else if (i.mnemonic === MN.Mov && code.isExec && i.imm !== null && i.imm > 0 && i.mem === null) {
        const t = code.toInternal(BigInt(i.imm));
        if (Number.isFinite(t)) v = t;
      }
    }
    if (s.p[k] !== v) {
      p ??= s.p.slice();
      p[k] = v;
    }
  }
  if (p) s.p = p;
}

/** What unknown code reads: the six integer argument registers, al, and the vector arguments (al of them when known). */
function argRegs(al: number): Relied {
  const r = noneRelied();
  r.g = ARG_GPR;
  const n = al >= 0 && al <= 8 ? al : 8;
  for (let i = 0; i < n; i++) r.vw[i] = 16;
  return r;
}

/** Track constants moved into al/eax: `xor eax,eax` / `mov eax, N` before a varargs call. */
function trackAl(s: State, i: Insn): void {
  if (!(i.mayWrite.g & (1 << RAX))) return;
  if (i.mnemonic === MN.Xor && i.op0Reg === i.op1Reg && AL_REGS.has(i.op0Reg)) s.al = 0;
  else if (i.mnemonic === MN.Mov && AL_REGS.has(i.op0Reg) && i.imm !== null) s.al = i.imm >= 0 && i.imm <= 8 ? i.imm : -1;
  else s.al = -1;
}

/** Reliance of every function on demand: the fixpoint over callers described above. */
export class Reliance {
  private readonly solved = new Map<number, Relied>();
  private readonly walks = new Map<number, WalkResult>();
  /** Nodes explored per query before the rest is taken as "relies on everything". */
  static readonly MAX_NODES = 4000;

  constructor(
    private readonly code: CodeImage,
    private readonly flow: FlowModel,
    private readonly table: FunctionTable,
    private readonly clobbers: Clobbers,
    private readonly walker: Walker,
    /** Whether the code at an address may rely on its callees' actual clobbers (false: compiled without -fipa-ra). */
    private readonly mayRely: (at: number) => boolean = () => true,
  ) {}

  /** Direct call and tail-jump sites reaching `entry` (jumps inside its own code excluded). */
  sites(entry: number): { at: number; kind: 'call' | 'jmp' }[] {
    const scan = this.code.scan();
    const own = this.flow.of(entry);
    const out: { at: number; kind: 'call' | 'jmp' }[] = [];
    for (const idx of scan.byTarget.get(entry) ?? []) {
      const at = scan.siteAt[idx]!;
      const kind = scan.siteKind[idx] === 0 ? 'call' : 'jmp';
      if (kind === 'jmp' && own.contains(at)) continue;
      out.push({ at, kind });
    }
    return out;
  }

  /** The walk after the call at `at` to `callee`. */
  siteWalk(at: number, callee: number): WalkResult {
    let w = this.walks.get(at);
    if (!w) {
      const c = this.clobbers.of(callee);
      const i = this.code.insn(at);
      const alive = { g: CALLER_SAVED_GPR & ~c.g, v: CALLER_SAVED_VEC & ~c.v };
      // A caller built without interprocedural register allocation keeps nothing live across a call.
      if (i && !this.mayRely(at)) w = { relied: noneRelied(), atReturn: { g: 0, v: 0 }, incomplete: null };
      else w = i ? this.walker.afterCall(i.next, alive, this.table.entryOf(at)) : { relied: noneRelied(), atReturn: { g: 0, v: 0 }, incomplete: 'call site does not decode' };
      this.walks.set(at, w);
    }
    return w;
  }

  /** What a call site relies on, given what its caller's callers rely on. */
  siteRelies(at: number, callee: number): Relied {
    const w = this.siteWalk(at, callee);
    const r = noneRelied();
    mergeRelied(r, w.relied);
    const caller = this.table.entryOf(at);
    if ((w.atReturn.g || w.atReturn.v) && caller >= 0) mergeRelied(r, reliedWithin(this.of(caller), w.atReturn));
    return r;
  }

  /** Registers callers of the function entered at `entry` rely on it to preserve. */
  of(entry: number): Relied {
    const hit = this.solved.get(entry);
    if (hit) return hit;
    // Explore the callers' graph, then iterate to the least fixpoint.
    const nodes = new Map<number, { deps: { from: number; mask: RegSet | null }[]; direct: Relied }>();
    const order: number[] = [];
    const todo = [entry];
    while (todo.length) {
      const e = todo.pop()!;
      if (nodes.has(e) || this.solved.has(e)) continue;
      if (nodes.size >= Reliance.MAX_NODES) continue; // left out: taken as relying on everything
      const direct = noneRelied();
      const deps: { from: number; mask: RegSet | null }[] = [];
      for (const s of this.sites(e)) {
        const caller = this.table.entryOf(s.at);
        if (s.kind === 'call') {
          const w = this.siteWalk(s.at, e);
          mergeRelied(direct, w.relied);
          if ((w.atReturn.g || w.atReturn.v) && caller >= 0) deps.push({ from: caller, mask: w.atReturn });
        } else if (caller >= 0 && caller !== e) deps.push({ from: caller, mask: null });
      }
      nodes.set(e, { deps, direct });
      order.push(e);
      for (const d of deps) if (!nodes.has(d.from) && !this.solved.has(d.from)) todo.push(d.from);
    }
    const value = new Map<number, Relied>();
    for (const e of order) value.set(e, { g: nodes.get(e)!.direct.g, vw: [...nodes.get(e)!.direct.vw] });
    const get = (e: number): Relied => this.solved.get(e) ?? value.get(e) ?? everything();
    for (let changed = true, rounds = 0; changed && rounds < 100; rounds++) {
      changed = false;
      for (const e of order) {
        const v = value.get(e)!;
        const c = this.clobbers.of(e);
        const keep = { g: CALLER_SAVED_GPR & ~c.g, v: CALLER_SAVED_VEC & ~c.v };
        for (const d of nodes.get(e)!.deps) {
          const from = get(d.from);
          if (mergeRelied(v, reliedWithin(from, d.mask ? { g: d.mask.g & keep.g, v: d.mask.v & keep.v } : keep))) changed = true;
        }
      }
    }
    for (const e of order) this.solved.set(e, value.get(e)!);
    return this.solved.get(entry)!;
  }
}

function everything(): Relied {
  return { g: CALLER_SAVED_GPR, vw: new Array<number>(16).fill(16) };
}
