/**
 * The code of one function as the analyses see it: its instructions, the
 * registers it writes itself, where it leaves (direct calls, tail jumps,
 * code outside the object), and its jump tables. Built once per entry.
 *
 * Indirect jumps: a jump through a table inside the function (gcc's
 * `jmp [table+reg*8]`, `movsxd; add; jmp reg`, or anything marked
 * `notrack`) stays in the function; its targets are read from the table
 * while they land inside the function. Any other indirect jump (`jmp rax`
 * after an epilogue, `jmp [rip+GOT]`) is taken as a tail call to unknown
 * code, which may clobber every caller-saved register: that is what gcc
 * itself assumes of such a sibling call, so it is exact for the callers'
 * register allocation.
 */
import { FC, MN, type CodeImage, type Insn } from './decode.js';
import type { FunctionTable, Region } from './functions.js';
import { EMPTY, union, type RegSet } from './regs.js';

/** Library functions that never return: code after a call to them belongs to something else. */
const NORETURN = new Set([
  'abort', 'exit', '_exit', '_Exit', 'quick_exit', '__stack_chk_fail', '__assert_fail', '__assert_perror_fail',
  '__fortify_fail', '__chk_fail', 'longjmp', '_longjmp', 'siglongjmp', '__longjmp_chk', 'pthread_exit', 'thrd_exit',
  '__cxa_throw', '__cxa_rethrow', '__cxa_bad_cast', '__cxa_bad_typeid', '_Unwind_Resume', '_ZSt9terminatev', 'err', 'errx',
  'verr', 'verrx', '__libc_fatal', '__ubsan_handle_builtin_unreachable',
]);

/** Instructions decoded per function (a discovered region stops here). */
const MAX_FUNCTION_INSNS = 50_000;
const MAX_TABLE = 4096;

export interface FunctionCode {
  region: Region;
  /** Instruction addresses in address order (flow order for discovered regions). */
  list: number[];
  /** Registers its own instructions may write. */
  writes: RegSet;
  /** Entries of functions it calls or tail-jumps to, inside the object. */
  callees: number[];
  /** It calls or jumps to code outside the object or through a pointer. */
  unknown: boolean;
  /** It can return to its caller (has a ret or leaves by a jump). */
  returns: boolean;
  /** Why parts could not be decoded (empty when all went well). */
  problems: string[];
  contains(at: number): boolean;
}

export class FlowModel {
  private readonly fns = new Map<number, FunctionCode>();
  private readonly tables = new Map<number, number[] | null>();
  private readonly positions = new WeakMap<FunctionCode, Map<number, number>>();

  /** `slots`: GOT slot -> symbol name, to recognise calls to functions that never return. */
  constructor(readonly code: CodeImage, readonly table: FunctionTable, private readonly slots: () => Map<number, string>) {}

  /**
   * Name of the imported function a call or jump at `i` reaches through
   * the GOT (`call [rip+slot]`, or a PLT stub `jmp [rip+slot]`), if any.
   */
  importedName(i: Insn): string | undefined {
    if (i.ripTarget >= 0 && (i.flow === FC.IndirectCall || i.flow === FC.IndirectJmp)) return this.slots().get(i.ripTarget);
    if (i.target < 0 || !this.external(i.target)) return undefined;
    // A PLT stub: [endbr64;] [bnd] jmp [rip+slot] within its first few instructions.
    let at = i.target;
    for (let k = 0; k < 3; k++) {
      const s = this.code.insn(at);
      if (!s) return undefined;
      if (s.flow === FC.IndirectJmp) return s.ripTarget >= 0 ? this.slots().get(s.ripTarget) : undefined;
      if (s.flow !== FC.Next) return undefined;
      at = s.next;
    }
    return undefined;
  }

  /** Can the call `i` return to the instruction after it? */
  callReturns(i: Insn): boolean {
    if (i.target >= 0 && !this.external(i.target)) return this.of(i.target).returns;
    const name = this.importedName(i);
    return name === undefined || !NORETURN.has(name);
  }

  /** Is a call/jump to `t` a way out of the object (PLT, or no code there)? */
  external(t: number): boolean {
    const s = this.code.sectionAt(t);
    return !s || s.plt;
  }

  of(entry: number): FunctionCode {
    let f = this.fns.get(entry);
    if (!f) {
      f = this.build(entry);
      this.fns.set(entry, f);
    }
    return f;
  }

  private build(entry: number): FunctionCode {
    const region = this.table.region(entry);
    const list: number[] = [];
    const problems: string[] = [];
    let contains: (at: number) => boolean;
    if (!region.discovered) {
      const parts = region.parts;
      contains = (at) => parts.some(([s, e]) => at >= s && at < e);
      for (const [s, e0] of parts) {
        // A symbol size is only a claim: decode no further than the section holding the code.
        const sec = this.code.sectionAt(s);
        if (!sec) {
          problems.push(`0x${this.code.toAddr(s).toString(16)} is not in an executable section`);
          continue;
        }
        const e = Math.min(e0, sec.end);
        if (e < e0) problems.push(`the symbol at 0x${this.code.toAddr(s).toString(16)} claims ${e0 - s} bytes, past the end of ${sec.name || 'its section'}`);
        let bad = 0;
        for (let at = s; at < e && list.length < MAX_FUNCTION_INSNS; ) {
          const i = this.code.insn(at);
          if (!i) {
            bad++;
            at++;
            continue;
          }
          list.push(at);
          at = i.next;
        }
        if (bad) problems.push(`${bad} byte(s) at 0x${this.code.toAddr(s).toString(16)}..0x${this.code.toAddr(e).toString(16)} do not decode as instructions`);
      }
    } else {
      const seen = new Set<number>();
      const work = [entry];
      while (work.length && seen.size < MAX_FUNCTION_INSNS) {
        let at = work.pop()!;
        while (!seen.has(at) && seen.size < MAX_FUNCTION_INSNS) {
          const i = this.code.insn(at);
          if (!i) {
            problems.push(`code at 0x${this.code.toAddr(at).toString(16)} does not decode`);
            break;
          }
          seen.add(at);
          list.push(at);
          if (i.flow === FC.Jcc && i.target >= 0) work.push(i.target);
          if (i.flow === FC.Jmp) {
            // A jump to another symbol is a tail call; otherwise it is still this function.
            if (i.target >= 0 && !this.table.startingAt(i.target).length && !this.external(i.target)) work.push(i.target);
            break;
          }
          if (i.flow === FC.Ret || i.flow === FC.IndirectJmp || i.flow === FC.Exception || i.flow === FC.Interrupt) break;
          at = i.next;
        }
      }
      if (seen.size >= MAX_FUNCTION_INSNS) problems.push(`no extent known and more than ${MAX_FUNCTION_INSNS} instructions reachable`);
      contains = (at) => seen.has(at);
    }
    const fc: FunctionCode = { region, list, writes: EMPTY, callees: [], unknown: false, returns: false, problems, contains };
    const callees = new Set<number>();
    let writes = EMPTY;
    for (let k = 0; k < list.length; k++) {
      const i = this.code.insn(list[k]!)!;
      writes = union(writes, i.mayWrite);
      switch (i.flow) {
        case FC.Call:
          if (i.target < 0 || this.external(i.target)) fc.unknown = true;
          else if (i.target !== entry) callees.add(i.target);
          break;
        case FC.Jmp:
        case FC.Jcc:
          if (i.target < 0) fc.unknown = true;
          else if (!contains(i.target)) {
            fc.returns = true;
            if (this.external(i.target)) fc.unknown = true;
            else if (i.target !== entry) callees.add(i.target);
          }
          break;
        case FC.IndirectCall:
          fc.unknown = true;
          break;
        case FC.IndirectJmp:
          if (!this.jumpTable(fc, k)) {
            fc.unknown = true;
            fc.returns = true;
          }
          break;
        case FC.Ret:
          fc.returns = true;
          break;
        default:
          break;
      }
    }
    fc.writes = writes;
    fc.callees = [...callees];
    if (region.discovered && list.length === 0) fc.returns = true;
    return fc;
  }

  /** Index of the instruction at `at` in `fc.list`, -1 when not there. */
  position(fc: FunctionCode, at: number): number {
    let m = this.positions.get(fc);
    if (!m) {
      m = new Map(fc.list.map((a, k) => [a, k]));
      this.positions.set(fc, m);
    }
    return m.get(at) ?? -1;
  }

  /**
   * Targets of the indirect jump at `list[k]` when it is a jump table of
   * `fc` (possibly empty when the table cannot be read), null when it is
   * not a jump table (an indirect tail call).
   */
  jumpTable(fc: FunctionCode, k: number): number[] | null {
    const at = fc.list[k]!;
    if (this.tables.has(at)) return this.tables.get(at)!;
    const r = this.resolveTable(fc, k);
    this.tables.set(at, r);
    return r;
  }

  private resolveTable(fc: FunctionCode, k: number): number[] | null {
    const jmp = this.code.insn(fc.list[k]!)!;
    const m = jmp.mem;
    if (m && m.base === -2) return null; // jmp [rip+X]: through the GOT, out of the object
    // The bound check before the table (`cmp idx, N; ja default`) says how many entries it has.
    let count = MAX_TABLE;
    let crossed = 0;
    for (let j = k - 1; j >= 0 && j >= k - 12; j--) {
      const p = this.code.insn(fc.list[j]!)!;
      if (p.flow === FC.Jcc && (p.mnemonic === MN.Ja || p.mnemonic === MN.Jae) && crossed === 0) {
        const c = j > 0 ? this.code.insn(fc.list[j - 1]!) : null;
        if (c && c.mnemonic === MN.Cmp && c.imm !== null && c.imm >= 0 && c.imm < MAX_TABLE) count = c.imm + (p.mnemonic === MN.Ja ? 1 : 0);
        crossed++;
        continue;
      }
      if (p.flow !== FC.Next) break;
    }
    if (m && m.base === -1 && m.index >= 0 && m.scale === 8) {
      // Non-PIC: jmp [disp + reg*8], absolute 8-byte entries.
      return this.readTable(fc, m.disp, 8, 0, count);
    }
    if (m) return jmp.notrack ? [] : null; // jmp [reg+disp]: a pointer in a structure
    // jmp reg: gcc and clang PIC tables are `lea rT,[rip+T]; movsxd rX,[rT+rI*4]; add rX,rT; jmp rX`.
    let looksLikeTable = jmp.notrack;
    let tableAt: number | null = null;
    for (let j = k - 1; j >= 0 && j >= k - 8; j--) {
      const p = this.code.insn(fc.list[j]!)!;
      if (p.mnemonic === MN.Movsxd && p.mem && p.mem.scale === 4 && p.mem.index >= 0) looksLikeTable = true;
      if (p.mnemonic === MN.Lea && p.ripTarget >= 0 && looksLikeTable) {
        tableAt = p.ripTarget;
        break;
      }
      if (p.flow !== FC.Next) break;
    }
    if (!looksLikeTable) return null;
    if (tableAt === null) return [];
    return this.readTable(fc, tableAt, 4, tableAt, count);
  }

  /** Read up to `count` table entries, while they point at instructions of the function. */
  private readTable(fc: FunctionCode, at: number, size: 4 | 8, relTo: number, count: number): number[] {
    const out: number[] = [];
    const elf = this.code.elf;
    for (let i = 0; i < count; i++) {
      let bytes: Uint8Array;
      try {
        bytes = elf.readVirtual(this.code.toAddr(at + i * size), size);
      } catch {
        break;
      }
      const dv = new DataView(bytes.buffer, bytes.byteOffset, size);
      const t = size === 4 ? relTo + dv.getInt32(0, true) : Number(BigInt.asUintN(64, dv.getBigUint64(0, true) - this.code.base));
      // Past the end of the table the words are something else: stop at the first that is not an instruction of the function.
      if (!fc.contains(t) || (!fc.region.discovered && this.position(fc, t) < 0) || !this.code.insn(t)) break;
      out.push(t);
    }
    return out;
  }
}
