/**
 * Patch-safety analysis of a base object: for a function, who reaches it
 * and how, what its callers rely on beyond the calling convention, whether
 * it uses its caller's stack frame, and which other copies of its code
 * exist. See src/analysis/types.ts for the report and README (analyze)
 * for what each hazard means.
 */
import type { ElfFile } from '../elf/index.js';
import { EM_X86_64, ET_DYN, ET_EXEC, findBuildId, SymbolIndex } from '../elf/index.js';
import { arch } from '../arch/index.js';
import { fail } from '../errors.js';
import { Clobbers } from './clobbers.js';
import { loadIced } from './iced.js';
import { copiesOf } from './copies.js';
import { CodeImage } from './decode.js';
import { DwarfInlines, producerMayRelyOnClobbers } from './dwarf.js';
import { FlowModel } from './flow.js';
import { FunctionTable, type FuncSym } from './functions.js';
import { DataRefs } from './refs.js';
import { CALLER_SAVED_GPR, CALLER_SAVED_VEC, setNames, GPR_NAMES } from './regs.js';
import { noneRelied, Reliance, reliedWithin, Walker, type Relied } from './reliance.js';
import { stackArguments } from './stackargs.js';
import type { CallerSite, FunctionReport, Hazard, InteriorEntry, ReliedRegister } from './types.js';

export type { CallerSite, FunctionReport, Hazard, InteriorEntry, ReliedRegister } from './types.js';

const cache = new WeakMap<ElfFile, BaseAnalysis>();
/** Reports kept per base (they are small; a base has at most this many asked about). */
const MAX_REPORTS = 4096;
/** A function's own branches are listed when they land this close to its start (the bytes a patch may write). */
const OWN_HEAD = 64;
/** Up to this size a function's bytes are looked up one by one as branch targets; larger ones walk every branch. */
const PER_BYTE_LIMIT = 1 << 16;

export class BaseAnalysis {
  readonly elf: ElfFile;
  readonly debug: ElfFile | undefined;
  readonly path: string | undefined;
  /** GNU build-id as hex, null when the object has none. */
  readonly buildId: string | null;
  private readonly code: CodeImage;
  private readonly table: FunctionTable;
  private readonly flow: FlowModel;
  private readonly clobbers: Clobbers;
  private readonly reliance: Reliance;
  private refs: DataRefs | undefined;
  private dwarf: DwarfInlines | null | undefined;
  private symIndex: SymbolIndex | undefined;
  private readonly producerCache = new Map<string, boolean>();

  private constructor(elf: ElfFile, debug: ElfFile | undefined, path: string | undefined) {
    if (elf.header.machine !== EM_X86_64) fail('EOPNOTSUPP', `${path ?? 'the base'} is not an x86-64 object (e_machine ${elf.header.machine}): analyze reads x86-64 code only`);
    if (elf.header.type !== ET_EXEC && elf.header.type !== ET_DYN) {
      fail('EINVAL', `${path ?? 'the base'} is not a linked executable or shared object (e_type ${elf.header.type}): give the program or library the payload patches`);
    }
    loadIced();
    this.elf = elf;
    this.debug = debug;
    this.path = path;
    const id = findBuildId(elf);
    this.buildId = id ? Buffer.from(id).toString('hex') : null;
    this.code = new CodeImage(elf);
    this.table = new FunctionTable(this.code, elf, debug);
    this.flow = new FlowModel(this.code, this.table, () => this.dataRefs().slots);
    this.clobbers = new Clobbers(this.flow);
    const walker = new Walker(this.code, this.flow, this.clobbers);
    this.reliance = new Reliance(this.code, this.flow, this.table, this.clobbers, walker, (at) => this.mayRely(at));
  }

  /** Cached per ElfFile. `debug`: a separate debug ELF with .symtab/DWARF for the same build-id (optional). */
  static of(elf: ElfFile, opts: { debug?: ElfFile; path?: string } = {}): BaseAnalysis {
    const hit = cache.get(elf);
    if (hit && (opts.debug === undefined || hit.debug === opts.debug)) return hit;
    const a = new BaseAnalysis(elf, opts.debug, opts.path);
    cache.set(elf, a);
    return a;
  }

  /** Names of all function symbols (for `analyze` with no function given). */
  functions(): string[] {
    return [...new Set(this.table.all.map((f) => f.display))];
  }

  /** Report on the function symbol `name` (global name, or FILE#NAME / unique local name, as SymbolIndex.lookup resolves it); undefined if no such function. */
  report(name: string): FunctionReport | undefined {
    // A fleet asks the same base about the same functions once per process.
    if (this.reports.has(name)) return this.reports.get(name);
    const r = this.computeReport(name);
    if (this.reports.size < MAX_REPORTS) this.reports.set(name, r);
    return r;
  }

  private readonly reports = new Map<string, FunctionReport | undefined>();

  private computeReport(name: string): FunctionReport | undefined {
    const f = this.resolve(name);
    if (!f) return undefined;
    const code = this.code;
    const entry = f.start;
    const hazards: Hazard[] = [];
    const problems: string[] = [...this.table.problems];
    const refs = this.dataRefs();
    problems.push(...refs.problems);
    const undecodable = [...code.scan().undecodable];
    const own = this.flow.of(entry);
    problems.push(...own.problems);
    if (own.list.length === 0) problems.push(`no instructions found at 0x${code.toAddr(entry).toString(16)}`);

    const clob = this.clobbers.of(entry);
    const keep = { g: CALLER_SAVED_GPR & ~clob.g, v: CALLER_SAVED_VEC & ~clob.v };
    const inName = (at: number): string | null => this.table.containing(at)?.display ?? null;
    const callers: CallerSite[] = [];
    for (const s of this.reliance.sites(entry)) {
      let r: Relied;
      if (s.kind === 'call') {
        r = this.reliance.siteRelies(s.at, entry);
        const w = this.reliance.siteWalk(s.at, entry);
        if (w.incomplete) problems.push(w.incomplete);
      } else {
        const from = this.table.entryOf(s.at);
        r = from >= 0 ? reliedWithin(this.reliance.of(from), keep) : noneRelied();
      }
      callers.push({ kind: s.kind, at: code.toAddr(s.at), in: inName(s.at), relies: reliedNames(r) });
    }
    for (const at of code.scan().refs.get(entry) ?? []) callers.push({ kind: 'address', at: code.toAddr(at), in: inName(at) });
    for (const at of refs.words.get(entry) ?? []) callers.push({ kind: 'data', at: code.toAddr(at), in: this.table.objectAt(at) ?? inName(at) });
    for (const at of refs.relocs.get(entry) ?? []) callers.push({ kind: 'reloc', at: code.toAddr(at), in: this.table.objectAt(at) ?? null });
    // Exported, or entered by the kernel or the dynamic loader (entry point, DT_INIT, DT_FINI): called from outside.
    if (refs.exports.has(entry) || refs.loader.has(entry)) callers.push({ kind: 'export', at: 0n, in: null });

    const interiorEntries = this.interiorEntries(f);

    const relied = this.reliance.of(entry);
    const reliedRegisters = reliedList(reliedWithin(relied, keep));
    const dwarf = this.dwarfInlines();
    const inlinedInto = dwarf ? dwarf.inlinedInto(f.name, f.global ? undefined : f.file, (pc) => this.symbolNameAt(pc)) : [];
    const copies = copiesOf(this.table, f, (at) => code.toAddr(at));
    const stack = stackArguments(code, this.flow, entry);
    const noCallers = callers.length === 0;

    const fn = f.display;
    if (noCallers) {
      hazards.push({
        function: fn, kind: 'inlined',
        detail: inlinedInto.length
          ? `nothing calls, jumps to or takes the address of ${fn}: it was inlined into ${list(inlinedInto)}; patch those functions instead, a patch of ${fn} changes nothing`
          : `nothing calls, jumps to or takes the address of ${fn}: it was inlined into its callers or is unused${dwarf ? '' : ' (no DWARF to say where: give the debug file)'}; a patch of ${fn} changes nothing`,
      });
    } else if (inlinedInto.length) {
      hazards.push({ function: fn, kind: 'inlined', detail: `${fn} was also inlined into ${list(inlinedInto)}: those copies are not patched by a patch of ${fn}; patch them too` });
    }
    if (reliedRegisters.length) {
      const example = callers.find((c) => c.relies && c.relies.length);
      const where = example ? ` (e.g. ${example.kind} at 0x${example.at.toString(16)}${example.in ? ` in ${example.in}` : ''} relies on ${example.relies!.join(', ')})` : '';
      hazards.push({
        function: fn, kind: 'registers',
        detail: `callers keep ${reliedRegisters.map((r) => r.name).join(', ')} live across calls to ${fn}${where}: a replacement must preserve them, or be called through a veneer that does`,
      });
    }
    if (stack === true) {
      hazards.push({ function: fn, kind: 'stack-arguments', detail: `${fn} reads arguments from its caller's stack frame (stack-passed or variadic arguments): no preserving veneer can be put in front of a replacement` });
    } else if (stack === 'unknown') {
      problems.push(`could not follow the stack pointer through ${fn} (realigned stack, alloca or unusual code): whether it uses stack arguments is unknown`);
    }
    for (const c of copies) {
      if (c.kind === 'alias') hazards.push({ function: fn, kind: 'alias', detail: `${c.name} is the same code at the same address: patching ${fn} patches ${c.name} too` });
      else if (c.kind === 'version') hazards.push({ function: fn, kind: 'copy', detail: `${c.name} is another version of ${fn} at 0x${c.addr.toString(16)}, kept for programs linked against it: a patch of ${fn} does not reach them; patch it too` });
      else hazards.push({ function: fn, kind: 'copy', detail: `${c.name} is a ${c.kind === 'clone' ? 'compiler-made copy' : `${c.kind} copy`} of ${fn} at 0x${c.addr.toString(16)}: a patch of ${fn} does not reach it; patch it too` });
    }
    const jumpFrom = arch.patchOffset(this.headBytes(entry));
    for (const e of interiorEntries) {
      if (e.own) continue;
      const where = `${e.kind === 'call' ? 'a call' : 'a jump'} at 0x${e.at.toString(16)}${e.in ? ` in ${e.in}` : ''} enters ${fn} ${e.offset} bytes past its start`;
      hazards.push({
        function: fn, kind: 'entry',
        detail: !e.inCode
          ? `${where}, decoded from bytes no symbol or unwind entry covers (data kept in the text, or code without either): not acted on`
          : e.offset > jumpFrom && e.offset < jumpFrom + arch.jumpLen
          ? `${where}, inside the ${arch.jumpLen} bytes a patch's jump writes there: it would run half an instruction, so a patch of ${fn} is refused; patch ${e.in ?? 'that code'} instead`
          : `${where}: that path runs the old code, not the replacement; patch ${e.in ?? 'that code'} as well`,
      });
    }
    if (this.table.fdeAt(entry) && this.throwsCxx()) {
      hazards.push({
        function: fn, kind: 'unwind',
        detail: `${fn} can be unwound through and the object unwinds for exceptions (C++ exceptions, Rust panics): an exception passing through the replacement (thrown by code it calls, caught by ${fn}'s callers) ends the process (std::terminate, or an abort), because a payload's unwind tables are not registered with the process's unwinder (a catch in the replacement is not found either): patch functions no exception passes through`,
      });
    }
    if (undecodable.length && own.problems.length) {
      problems.push(`parts of ${undecodable.map(([s, n]) => `${s} (${n} bytes)`).join(', ')} do not decode: references from there are missing`);
    }
    for (const p of [...new Set(problems)]) hazards.push({ function: fn, kind: 'unanalysable', detail: p });

    return {
      function: fn,
      addr: code.toAddr(entry),
      size: BigInt(f.end - f.start),
      callers,
      noCallers,
      inlinedInto,
      reliedRegisters,
      clobbers: setNames(clob),
      stackArguments: stack,
      interiorEntries,
      copies,
      hazards,
    };
  }

  /** Whether the object unwinds for exceptions: it imports or defines the C++ personality routine or _Unwind_Resume (C++, and Rust's panics). */
  private throwsCxx(): boolean {
    // The function table's symbols include the undefined ones (imports carry their version: `@CXXABI_1.3`).
    this.cxx ??= this.table.symbols.some((x) => /^(__gxx_personality_v0|_Unwind_Resume)(@|$)/.test(x.name));
    return this.cxx;
  }

  private cxx: boolean | undefined;

  /** The first bytes of the function at `entry` (fewer at the end of its section), for where a patch's jump goes. */
  private headBytes(entry: number): Uint8Array {
    const sec = this.code.sectionAt(entry);
    return sec ? sec.bytes.subarray(entry - sec.start, Math.min(sec.end, entry + 16) - sec.start) : new Uint8Array(0);
  }

  /** Direct branches into `f` past its first byte (see InteriorEntry), by address of the target then of the branch. */
  private interiorEntries(f: FuncSym): InteriorEntry[] {
    const scan = this.code.scan();
    const out: { t: number; e: InteriorEntry }[] = [];
    // A function and its .cold part are one (entryOf gives the parent for both).
    const home = this.table.entryOf(f.start);
    const add = (i: number, t: number): void => {
      const at = scan.siteAt[i]!;
      // The .cold part of f is f's own code (entered only from f).
      const holder = this.table.containing(at);
      const own = this.table.entryOf(at) === home || (holder === undefined && this.fragmentOf(at, f, home));
      if (own && t - f.start >= OWN_HEAD) return;
      const inCode = own || holder !== undefined || this.table.fdeAt(at) !== undefined;
      out.push({ t, e: { at: this.code.toAddr(at), in: holder?.display ?? null, kind: scan.siteKind[i] === 0 ? 'call' : 'jmp', offset: t - f.start, own, inCode } });
    };
    if (f.end - f.start <= PER_BYTE_LIMIT) {
      for (let t = f.start + 1; t < f.end; t++) for (const i of scan.byTarget.get(t) ?? []) add(i, t);
    } else {
      for (let i = 0; i < scan.siteTarget.length; i++) {
        const t = scan.siteTarget[i]!;
        if (t > f.start && t < f.end) add(i, t);
      }
    }
    return out.sort((a, b) => a.t - b.t || (a.e.at < b.e.at ? -1 : 1)).map((x) => x.e);
  }

  /**
   * True when the code at `at` (no symbol: a stripped object) lies in an
   * unwind entry's range that only `f` enters: a `.cold` part whose name
   * went with the symbol table. Entered means a direct branch from outside
   * the range, or its start referenced in any other way.
   */
  private fragmentOf(at: number, f: FuncSym, home: number): boolean {
    const range = this.table.fdeAt(at);
    if (!range) return false;
    const [a, b] = range;
    if (b - a > PER_BYTE_LIMIT) return false;
    const scan = this.code.scan();
    const refs = this.dataRefs();
    if (scan.refs.has(a) || refs.words.has(a) || refs.relocs.has(a) || refs.exports.has(a) || refs.loader.has(a)) return false;
    let entered = false;
    for (let t = a; t < b; t++) {
      for (const i of scan.byTarget.get(t) ?? []) {
        const from = scan.siteAt[i]!;
        if (from >= a && from < b) continue;
        if (this.table.entryOf(from) !== home && !(from >= f.start && from < f.end)) return false;
        entered = true;
      }
    }
    return entered;
  }

  private resolve(name: string): FuncSym | undefined {
    this.symIndex ??= new SymbolIndex(this.table.symbols);
    const hit = this.symIndex.lookup(name);
    const byDisplay = this.table.all.filter((f) => f.display === name);
    if (hit && hit.isFunc) {
      const at = this.code.toInternal(hit.value);
      const f = this.table.startingAt(at).find((g) => g.name === hit.name && g.global === hit.global);
      if (f) return f;
    }
    return byDisplay.find((f) => f.global) ?? byDisplay[0];
  }

  private dataRefs(): DataRefs {
    this.refs ??= new DataRefs(this.elf, this.code);
    return this.refs;
  }

  private dwarfInlines(): DwarfInlines | null {
    if (this.dwarf === undefined) {
      const d = new DwarfInlines(this.debug ?? this.elf);
      this.dwarf = d.present ? d : null;
    }
    return this.dwarf;
  }

  /** Per compile unit, from DW_AT_producer: can code at `at` rely on its callees' actual clobbers? Yes when unknown. */
  private mayRely(at: number): boolean {
    const d = this.dwarfInlines();
    if (!d) return true;
    const producer = d.producerAt(Number(this.code.toAddr(at)));
    if (producer === undefined) return true;
    let v = this.producerCache.get(producer);
    if (v === undefined) {
      v = producerMayRelyOnClobbers(producer);
      this.producerCache.set(producer, v);
    }
    return v;
  }

  private symbolNameAt(pc: number): string | undefined {
    const at = this.code.toInternal(BigInt(pc));
    const syms = this.table.startingAt(at);
    return (syms.find((s) => s.global) ?? syms[0])?.display;
  }
}

function reliedList(r: Relied): ReliedRegister[] {
  const out: ReliedRegister[] = [];
  for (let i = 0; i < 16; i++) if (r.g & (1 << i)) out.push({ name: GPR_NAMES[i]!, width: 8 });
  for (let i = 0; i < 16; i++) if (r.vw[i]) out.push({ name: `xmm${i}`, width: r.vw[i]! });
  return out;
}

function reliedNames(r: Relied): string[] {
  return reliedList(r).map((x) => x.name);
}

function list(names: string[]): string {
  return names.length > 4 ? `${names.slice(0, 4).join(', ')} and ${names.length - 4} more` : names.join(', ');
}

