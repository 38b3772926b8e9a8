/**
 * Machine code of a base object, decoded with iced-x86: one linear sweep
 * per executable section for what points where (branch and call targets,
 * RIP-relative and absolute address operands), and single instructions
 * decoded with register and operand information on demand, cached, for
 * the per-function analyses. Shared by all reports on one ElfFile.
 *
 * Addresses inside the analysis are plain numbers: link-time address minus
 * `base`, which is 0 unless the object lies above 2^53 (Xen's xen-syms),
 * so arithmetic stays exact without bigint on the hot paths.
 */
import { onIced, type Iced } from './iced.js';
import type { Decoder as IcedDecoder, Instruction as IcedInstruction, InstructionInfoFactory as IcedInfoFactory } from 'iced-x86';
import type { ElfFile } from '../elf/index.js';
import { ET_EXEC, SHF_ALLOC, SHF_EXECINSTR, SHF_WRITE, SHT_NOBITS } from '../elf/index.js';
import { gprOf, RAX, R8, R9, R10, R11, RCX, RDI, RDX, RSI, RSP, vecOf, W16, W32, W64, W8, WH8, widthOf, type RegSet } from './regs.js';

// Filled in once iced is loaded (./iced.ts): importers see the values through live bindings.
let Decoder!: Iced['Decoder'], DecoderOptions!: Iced['DecoderOptions'], Instruction!: Iced['Instruction'];
let InstructionInfoFactory!: Iced['InstructionInfoFactory'], Register!: Iced['Register'], IcedCode!: Iced['Code'];
let Mnemonic!: Iced['Mnemonic'], OpKind!: Iced['OpKind'];

type Num<T> = { [K in keyof T]: number };
export let FC!: Num<{ Next: 0; Jmp: 0; IndirectJmp: 0; Jcc: 0; Ret: 0; Call: 0; IndirectCall: 0; Interrupt: 0; Xbegin: 0; Exception: 0 }>;
export let MN!: Num<{ Lea: 0; Mov: 0; Movsxd: 0; And: 0; Sub: 0; Add: 0; Leave: 0; Xor: 0; Push: 0; Pop: 0; Syscall: 0; Enter: 0; Cmp: 0; Ja: 0; Jae: 0 }>;
export let OK!: { Register: number; Memory: number };
let ACCESS_READS!: Set<number>, ACCESS_KILLS!: Set<number>, ACCESS_WRITES!: Set<number>;

onIced((iced) => {
  ({ Decoder, DecoderOptions, Instruction, InstructionInfoFactory, Register, Code: IcedCode, Mnemonic, OpKind } = iced);
  const { FlowControl, OpAccess } = iced;
  FC = {
    Next: FlowControl.Next,
    Jmp: FlowControl.UnconditionalBranch,
    IndirectJmp: FlowControl.IndirectBranch,
    Jcc: FlowControl.ConditionalBranch,
    Ret: FlowControl.Return,
    Call: FlowControl.Call,
    IndirectCall: FlowControl.IndirectCall,
    Interrupt: FlowControl.Interrupt,
    Xbegin: FlowControl.XbeginXabortXend,
    Exception: FlowControl.Exception,
  };

  MN = {
    Lea: Mnemonic.Lea, Mov: Mnemonic.Mov, Movsxd: Mnemonic.Movsxd, And: Mnemonic.And, Sub: Mnemonic.Sub,
    Add: Mnemonic.Add, Leave: Mnemonic.Leave, Xor: Mnemonic.Xor, Push: Mnemonic.Push, Pop: Mnemonic.Pop,
    Syscall: Mnemonic.Syscall, Enter: Mnemonic.Enter, Cmp: Mnemonic.Cmp, Ja: Mnemonic.Ja, Jae: Mnemonic.Jae,
  };

  OK = { Register: OpKind.Register, Memory: OpKind.Memory };
  ACCESS_READS = new Set<number>([OpAccess.Read, OpAccess.CondRead, OpAccess.ReadWrite, OpAccess.ReadCondWrite]);
  ACCESS_KILLS = new Set<number>([OpAccess.Write, OpAccess.ReadWrite]);
  ACCESS_WRITES = new Set<number>([OpAccess.Write, OpAccess.ReadWrite, OpAccess.CondWrite, OpAccess.ReadCondWrite]);
});

/** A register reference: `(id << 7) | width`; id 0-15 general registers, 16+n vector register n. */
export const VEC_ID = 16;
/** Width code of a vzeroupper kill: the upper halves only. */
export const UPPER = 1;

/** An explicit memory operand. Registers are general-register numbers (-1 none, -2 rip or other). */
export interface MemRef {
  base: number;
  index: number;
  scale: number;
  /** Signed displacement (for rip-relative operands: the effective address). */
  disp: number;
}

/** One instruction with what it reads and writes. */
export interface Insn {
  at: number;
  len: number;
  next: number;
  flow: number;
  /** Direct branch or call target, -1 when none. */
  target: number;
  mnemonic: number;
  /** Registers read (incl. implicit reads and address registers), see VEC_ID for the encoding. */
  reads: number[];
  /** Registers written unconditionally, with the width written. */
  kills: number[];
  /** Every register possibly written (the clobber set contribution). */
  mayWrite: RegSet;
  mem: MemRef | null;
  /** Effective address of a rip-relative operand, -1 when none. */
  ripTarget: number;
  op0Kind: number;
  op0Reg: number;
  op1Kind: number;
  op1Reg: number;
  /** Immediate of operand 1 (signed), when it has one. */
  imm: number | null;
  /** `notrack` prefix (gcc's jump tables under -fcf-protection). */
  notrack: boolean;
  invalid: boolean;
}

export interface CodeSection {
  index: number;
  name: string;
  start: number;
  end: number;
  bytes: Uint8Array;
  /** A PLT section: calls into it leave the object. */
  plt: boolean;
}

/** What the linear sweep found. */
export interface Scan {
  /** Direct calls and jumps: where, to where, 0 call / 1 jmp / 2 jcc. */
  siteAt: number[];
  siteTarget: number[];
  siteKind: number[];
  /** Site indices by target. */
  byTarget: Map<number, number[]>;
  /** Instructions naming an address (rip-relative operands, or absolute immediates in executables), by address. */
  refs: Map<number, number[]>;
  /** Bytes the sweep could not decode, per section name. */
  undecodable: Map<string, number>;
  instructions: number;
}

const finalizer = new FinalizationRegistry<IcedDecoder[]>((ds) => {
  for (const d of ds) d.free();
});

let shared: { ins: IcedInstruction; info: IcedInfoFactory } | undefined;
function sharedIced(): { ins: IcedInstruction; info: IcedInfoFactory } {
  shared ??= { ins: new Instruction(), info: new InstructionInfoFactory() };
  return shared;
}

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

/** The executable code of one ElfFile. */
export class CodeImage {
  readonly sections: CodeSection[];
  /** Link-time address of internal address 0. */
  readonly base: bigint;
  readonly isExec: boolean;
  private readonly decoders = new Map<number, IcedDecoder>();
  private readonly live: IcedDecoder[] = [];
  private readonly cache = new Map<number, Insn | null>();
  private scanned: Scan | undefined;

  constructor(readonly elf: ElfFile) {
    let max = 0n;
    let min: bigint | undefined;
    for (const s of elf.sections) {
      if (!(s.flags & SHF_ALLOC) || s.size === 0n) continue;
      if (s.addr + s.size > max) max = s.addr + s.size;
      if (min === undefined || s.addr < min) min = s.addr;
    }
    this.base = max > MAX_SAFE && min !== undefined ? min : 0n;
    this.isExec = elf.header.type === ET_EXEC;
    this.sections = [];
    for (const s of elf.sections) {
      if (s.type === SHT_NOBITS || !(s.flags & SHF_ALLOC) || !(s.flags & SHF_EXECINSTR) || s.size === 0n) continue;
      if (!elf.inFile(s) || s.addr < this.base || s.addr + s.size - this.base > MAX_SAFE) continue;
      const start = Number(s.addr - this.base);
      this.sections.push({
        index: s.index, name: s.name, start, end: start + Number(s.size), bytes: elf.data(s),
        plt: s.name === '.plt' || s.name.startsWith('.plt.') || s.name === '.iplt',
      });
    }
    this.sections.sort((a, b) => a.start - b.start);
    finalizer.register(this, this.live);
  }

  /** Internal address of a link-time address (NaN when out of range). */
  toInternal(addr: bigint): number {
    const d = addr - this.base;
    return d < 0n || d > MAX_SAFE ? NaN : Number(d);
  }

  toAddr(at: number): bigint {
    return BigInt(at) + this.base;
  }

  /**
   * The NUL-terminated string at internal address `at` in an allocated,
   * non-writable section of the file (a format literal), at most 1 KiB;
   * undefined when there is none.
   */
  cString(at: number): string | undefined {
    if (!Number.isFinite(at) || at < 0) return undefined;
    const addr = this.toAddr(at);
    const sec = this.elf.sections.find((x) => (x.flags & SHF_ALLOC) !== 0n && (x.flags & SHF_WRITE) === 0n && x.type !== SHT_NOBITS && x.addr <= addr && addr < x.addr + x.size);
    if (!sec) return undefined;
    let bytes: Uint8Array;
    try {
      bytes = this.elf.data(sec);
    } catch {
      return undefined;
    }
    const from = Number(addr - sec.addr);
    const end = bytes.indexOf(0, from);
    if (end < 0 || end - from > 1024) return undefined;
    return Buffer.from(bytes.buffer, bytes.byteOffset + from, end - from).toString('latin1');
  }

  sectionAt(at: number): CodeSection | undefined {
    let lo = 0, hi = this.sections.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const s = this.sections[mid]!;
      if (at < s.start) hi = mid - 1;
      else if (at >= s.end) lo = mid + 1;
      else return s;
    }
    return undefined;
  }

  private decoder(sec: CodeSection): IcedDecoder {
    let d = this.decoders.get(sec.index);
    if (!d) {
      d = new Decoder(64, sec.bytes, DecoderOptions.None);
      this.decoders.set(sec.index, d);
      this.live.push(d);
    }
    return d;
  }

  /** The linear sweep, done once. */
  scan(): Scan {
    if (this.scanned) return this.scanned;
    const { ins } = sharedIced();
    const s: Scan = { siteAt: [], siteTarget: [], siteKind: [], byTarget: new Map(), refs: new Map(), undecodable: new Map(), instructions: 0 };
    const addRef = (target: number, at: number): void => {
      const l = s.refs.get(target);
      if (l) l.push(at);
      else s.refs.set(target, [at]);
    };
    for (const sec of this.sections) {
      const d = this.decoder(sec);
      d.position = 0;
      d.ip = BigInt(sec.start);
      let bad = 0;
      const size = sec.bytes.length;
      let pos = 0;
      while (pos < size) {
        d.decodeOut(ins);
        const len = ins.length;
        const at = sec.start + pos;
        if (ins.code === IcedCode.INVALID || len === 0) {
          // Data or padding the decoder rejects: resynchronise one byte later.
          bad++;
          pos++;
          d.position = pos;
          d.ip = BigInt(sec.start + pos);
          continue;
        }
        pos += len;
        s.instructions++;
        const fc = ins.flowControl;
        if (fc === FC.Call || fc === FC.Jmp || fc === FC.Jcc) {
          const t = ins.nearBranch64;
          if (t <= MAX_SAFE) {
            const kind = fc === FC.Call ? 0 : fc === FC.Jmp ? 1 : 2;
            // Only near branches carry a target (far/loop forms are not calls).
            if (ins.op0Kind === OpKind.NearBranch64) {
              const idx = s.siteAt.length;
              s.siteAt.push(at);
              s.siteTarget.push(Number(t));
              s.siteKind.push(kind);
              const l = s.byTarget.get(Number(t));
              if (l) l.push(idx);
              else s.byTarget.set(Number(t), [idx]);
            }
          }
        } else if (ins.isIpRelMemoryOperand) {
          const t = ins.ipRelMemoryAddress;
          if (t <= MAX_SAFE) addRef(Number(t), at);
        } else if (this.isExec && ins.opCount >= 1) {
          // Non-PIE code loads function addresses as immediates: mov edi, OFFSET f / push OFFSET f.
          const mn = ins.mnemonic;
          if (mn === Mnemonic.Mov || mn === Mnemonic.Push) {
            const op = mn === Mnemonic.Push ? 0 : 1;
            const k = ins.opKind(op);
            if (k === OpKind.Immediate32 || k === OpKind.Immediate32to64 || k === OpKind.Immediate64) {
              const v = ins.immediate(op);
              if (v >= this.base && v - this.base <= MAX_SAFE) {
                const t = Number(v - this.base);
                if (this.sectionAt(t)) addRef(t, at);
              }
            }
          }
        }
      }
      if (bad) s.undecodable.set(sec.name, bad);
    }
    this.scanned = s;
    return s;
  }

  /** The instruction at `at`, decoded with register information; null when it cannot be decoded. */
  insn(at: number): Insn | null {
    const hit = this.cache.get(at);
    if (hit !== undefined) return hit;
    const sec = this.sectionAt(at);
    let r: Insn | null = null;
    if (sec) {
      const d = this.decoder(sec);
      const { ins, info } = sharedIced();
      d.position = at - sec.start;
      d.ip = BigInt(at);
      d.decodeOut(ins);
      r = ins.code === IcedCode.INVALID || ins.length === 0 ? null : facts(ins, info, at);
      this.cache.set(at, r);
    }
    return r;
  }
}


const ref = (id: number, w: number): number => (id << 7) | w;

function memReg(r: number): number {
  if (r === Register.None) return -1;
  const g = gprOf(r);
  return g >= 0 ? g : -2;
}

function facts(ins: IcedInstruction, factory: IcedInfoFactory, at: number): Insn {
  const len = ins.length;
  const flow = ins.flowControl;
  const mnemonic = ins.mnemonic;
  const op0Kind = ins.op0Kind;
  let target = -1;
  if ((flow === FC.Call || flow === FC.Jmp || flow === FC.Jcc) && op0Kind === OpKind.NearBranch64) {
    const t = ins.nearBranch64;
    if (t <= MAX_SAFE) target = Number(t);
  }
  const reads: number[] = [];
  const kills: number[] = [];
  let wg = 0, wv = 0;
  if (mnemonic === Mnemonic.Vzeroupper || mnemonic === Mnemonic.Vzeroall) {
    // iced models these as reading xmm0-15 to keep them; that is no use of a value.
    const full = mnemonic === Mnemonic.Vzeroall;
    for (let i = 0; i < 16; i++) kills.push(ref(VEC_ID + i, full ? 64 : UPPER));
    wv = 0xffff;
  } else {
    const info = factory.info(ins);
    const used = info.usedRegisters() as { register: number; access: number; free(): void }[];
    for (const u of used) {
      const reg = u.register;
      const acc = u.access;
      u.free();
      let id = gprOf(reg);
      if (id < 0) {
        const v = vecOf(reg);
        if (v < 0) continue;
        id = VEC_ID + v;
      }
      const w = widthOf(reg);
      if (ACCESS_READS.has(acc)) reads.push(ref(id, w));
      if (ACCESS_KILLS.has(acc)) kills.push(ref(id, w));
      if (ACCESS_WRITES.has(acc)) {
        if (id < VEC_ID) {
          if (id !== RSP) wg |= 1 << id;
        } else wv |= 1 << (id - VEC_ID);
      }
    }
    info.free();
  }
  if (mnemonic === Mnemonic.Syscall) {
    // The kernel reads the number and six arguments and returns in rax.
    for (const r of [RAX, RDI, RSI, RDX, R10, R8, R9]) reads.push(ref(r, W64));
    kills.push(ref(RAX, W64), ref(RCX, W64), ref(R11, W64));
    wg |= (1 << RAX) | (1 << RCX) | (1 << R11);
  }
  let mem: MemRef | null = null;
  let ripTarget = -1;
  const opCount = ins.opCount;
  for (let i = 0; i < opCount; i++) {
    if (ins.opKind(i) !== OpKind.Memory) continue;
    if (ins.isIpRelMemoryOperand) {
      const t = ins.ipRelMemoryAddress;
      if (t <= MAX_SAFE) ripTarget = Number(t);
      mem = { base: -2, index: -1, scale: 1, disp: ripTarget };
    } else {
      mem = {
        base: memReg(ins.memoryBase), index: memReg(ins.memoryIndex), scale: ins.memoryIndexScale,
        disp: Number(BigInt.asIntN(64, ins.memoryDisplacement)),
      };
    }
    break;
  }
  const op1Kind = opCount > 1 ? ins.op1Kind : -1;
  let imm: number | null = null;
  if (opCount > 1 && op1Kind !== OpKind.Register && op1Kind !== OpKind.Memory && op1Kind >= OpKind.Immediate8 && op1Kind <= OpKind.Immediate32to64) {
    imm = Number(BigInt.asIntN(64, ins.immediate(1)));
  }
  return {
    at, len, next: at + len, flow, target, mnemonic, reads, kills, mayWrite: { g: wg >>> 0, v: wv >>> 0 }, mem, ripTarget,
    op0Kind, op0Reg: op0Kind === OpKind.Register ? ins.op0Register : -1,
    op1Kind, op1Reg: op1Kind === OpKind.Register ? ins.op1Register : -1,
    imm,
    notrack: (flow === FC.IndirectJmp || flow === FC.IndirectCall) && ins.segmentPrefix === Register.DS,
    invalid: false,
  };
}

/** Width codes re-exported for the analyses. */
export { W8, WH8, W16, W32, W64 };
