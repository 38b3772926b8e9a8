/**
 * The functions of a base object: symbols (from a debug file's `.symtab`,
 * the object's `.symtab`, or only `.dynsym` when stripped) with their
 * report names, `.cold` parts, and extents from `.eh_frame` for code no
 * symbol covers. Answers "which function is this address in" and "what
 * code belongs to the function entered here".
 */
import type { ElfFile, ElfSymbol } from '../elf/index.js';
import { readSymbols, SHN_UNDEF, STB_LOCAL, STB_WEAK, STT_FUNC, STT_GNU_IFUNC, STT_OBJECT, SHT_DYNSYM, SHT_SYMTAB } from '../elf/index.js';
import type { CodeImage } from './decode.js';
import { readFdeRanges } from './ehframe.js';

export interface FuncSym {
  /** Symbol name as in the table. */
  name: string;
  /** The name a user gives to find it: NAME, or FILE#NAME for a static whose name is not unique. */
  display: string;
  start: number;
  end: number;
  global: boolean;
  weak: boolean;
  /** STV_* visibility. */
  visibility: number;
  file: string | undefined;
}

/** The code of one function: its entry and the address ranges that belong to it. */
export interface Region {
  entry: number;
  parts: [number, number][];
  /** Symbol (display name) when known. */
  sym: FuncSym | null;
  /** No extent known (no symbol or FDE): discovered by following the code. */
  discovered: boolean;
}

const COLD = /^(.*?)\.cold(\.\d+)?$/;

export class FunctionTable {
  /** Function symbols sorted by start (aliases included). */
  readonly all: FuncSym[];
  private readonly byStart = new Map<number, FuncSym[]>();
  private readonly byName = new Map<string, FuncSym[]>();
  private readonly fdes: [number, number][];
  private readonly objects: { name: string; start: number; end: number }[] = [];
  /** The symbol table the names come from. */
  readonly symbols: ElfSymbol[];
  /** Problems reading the tables (the analysis goes on without them). */
  readonly problems: string[] = [];

  constructor(readonly code: CodeImage, elf: ElfFile, debug: ElfFile | undefined) {
    const syms = this.loadSymbols(elf, debug);
    this.symbols = syms;
    this.all = named(syms, code);
    for (const s of syms) {
      if (s.type !== STT_OBJECT || s.shndx === SHN_UNDEF || !s.name || s.size === 0n) continue;
      const start = code.toInternal(s.value);
      if (Number.isFinite(start)) this.objects.push({ name: s.name, start, end: start + Number(s.size) });
    }
    this.objects.sort((a, b) => a.start - b.start);
    this.all.sort((a, b) => a.start - b.start || Number(b.global) - Number(a.global));
    for (const f of this.all) {
      push(this.byStart, f.start, f);
      push(this.byName, f.name, f);
    }
    this.fdes = [];
    for (const [s, e] of readFdeRanges(elf)) {
      const a = code.toInternal(s), b = code.toInternal(e);
      if (Number.isFinite(a) && Number.isFinite(b)) this.fdes.push([a, b]);
    }
  }

  private loadSymbols(elf: ElfFile, debug: ElfFile | undefined): ElfSymbol[] {
    for (const [file, type] of [[debug, SHT_SYMTAB], [elf, SHT_SYMTAB], [elf, SHT_DYNSYM]] as const) {
      const tab = file?.sections.find((s) => s.type === type);
      if (!file || !tab) continue;
      try {
        return readSymbols(file, tab);
      } catch (e) {
        this.problems.push(`symbol table ${tab.name || `[${tab.index}]`} is unreadable (${(e as Error).message})`);
      }
    }
    return [];
  }

  /** Symbols starting exactly at `at`. */
  startingAt(at: number): FuncSym[] {
    return this.byStart.get(at) ?? [];
  }

  named(name: string): FuncSym[] {
    return this.byName.get(name) ?? [];
  }

  /** The function symbol covering `at` (a global one when several do). */
  containing(at: number): FuncSym | undefined {
    let lo = 0, hi = this.all.length - 1, idx = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (this.all[mid]!.start <= at) { idx = mid; lo = mid + 1; } else hi = mid - 1;
    }
    // Walk back over nested or zero-sized symbols; a handful at most.
    for (let i = idx, n = 0; i >= 0 && n < 16; i--, n++) {
      const f = this.all[i]!;
      if (at >= f.start && at < f.end) {
        const same = this.byStart.get(f.start)!.filter((g) => at < g.end);
        return same.find((g) => g.global) ?? same[0] ?? f;
      }
    }
    return undefined;
  }

  /** The data object (STT_OBJECT symbol) covering `at`, to name where a pointer is stored. */
  objectAt(at: number): string | undefined {
    let lo = 0, hi = this.objects.length - 1, idx = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (this.objects[mid]!.start <= at) { idx = mid; lo = mid + 1; } else hi = mid - 1;
    }
    const o = idx >= 0 ? this.objects[idx]! : undefined;
    return o && at < o.end ? o.name : undefined;
  }

  /** The FDE range covering `at`. */
  fdeAt(at: number): [number, number] | undefined {
    let lo = 0, hi = this.fdes.length - 1, idx = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (this.fdes[mid]![0] <= at) { idx = mid; lo = mid + 1; } else hi = mid - 1;
    }
    const r = idx >= 0 ? this.fdes[idx]! : undefined;
    return r && at < r[1] ? r : undefined;
  }

  /** `.cold` parts of a function (symbols `NAME.cold`, `NAME.cold.N` in the same file). */
  coldParts(f: FuncSym): FuncSym[] {
    const out: FuncSym[] = [];
    for (const suffix of ['.cold', ...Array.from({ length: 4 }, (_, i) => `.cold.${i}`)]) {
      for (const c of this.named(f.name + suffix)) if (c.file === f.file || f.global) out.push(c);
    }
    return out;
  }

  /**
   * The entry of the function whose code contains `at`, for "who returns
   * to whom": a `.cold` part belongs to its parent; without a symbol, the
   * FDE start. -1 when unknown.
   */
  entryOf(at: number): number {
    const s = this.containing(at);
    if (s) {
      const m = COLD.exec(s.name);
      if (m) {
        const parent = this.named(m[1]!).find((p) => p.file === s.file || p.global);
        if (parent) return parent.start;
      }
      return s.start;
    }
    const r = this.fdeAt(at);
    return r ? r[0] : -1;
  }

  /** The code of the function entered at `entry`; null parts means "follow the code" (no extent known). */
  region(entry: number): Region {
    const sym = this.startingAt(entry).find((f) => f.end > f.start) ?? null;
    if (sym) {
      const parts: [number, number][] = [[sym.start, sym.end]];
      for (const c of this.coldParts(sym)) if (c.end > c.start) parts.push([c.start, c.end]);
      return { entry, parts, sym, discovered: false };
    }
    const fde = this.fdeAt(entry);
    if (fde) return { entry, parts: [[entry, fde[1]]], sym: null, discovered: false };
    const cover = this.containing(entry);
    if (cover) return { entry, parts: [[entry, cover.end]], sym: null, discovered: false };
    return { entry, parts: [], sym: null, discovered: true };
  }
}

function push<K, V>(m: Map<K, V[]>, k: K, v: V): void {
  const l = m.get(k);
  if (l) l.push(v);
  else m.set(k, [v]);
}

/** Function symbols with their report names, the way SymbolIndex.lookup resolves names. */
function named(syms: ElfSymbol[], code: CodeImage): FuncSym[] {
  const funcs = syms.filter((s) => (s.type === STT_FUNC || s.type === STT_GNU_IFUNC) && s.shndx !== SHN_UNDEF && s.name && s.index !== 0);
  const globals = new Set(funcs.filter((s) => s.bind !== STB_LOCAL).map((s) => s.name));
  const localCount = new Map<string, number>();
  for (const s of syms) if (s.bind === STB_LOCAL && s.name && s.shndx !== SHN_UNDEF) localCount.set(s.name, (localCount.get(s.name) ?? 0) + 1);
  const out: FuncSym[] = [];
  for (const s of funcs) {
    const start = code.toInternal(s.value);
    if (!Number.isFinite(start)) continue;
    const global = s.bind !== STB_LOCAL;
    const unique = !globals.has(s.name) && localCount.get(s.name) === 1;
    const display = global || unique || s.file === undefined ? s.name : `${s.file}#${s.name}`;
    out.push({
      name: s.name, display, start, end: start + Number(s.size > 0xffffffffn ? 0n : s.size),
      global, weak: s.bind === STB_WEAK, visibility: s.other & 3, file: s.file,
    });
  }
  return out;
}
