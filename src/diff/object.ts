/**
 * One relocatable object (ORIG.o or PATCHED.o) as the diff sees it: its
 * allocated sections, the functions and data objects in them, and what
 * each relocation points at. Built on src/elf; every malformation is a
 * HotstackError naming the file.
 */
import { fail, HotstackError, toHotstackError } from '../errors.js';
import {
  ElfFile, ET_REL, toHex, R_X86_64, readRelas, readSymbols, SHF_ALLOC, SHF_EXECINSTR, SHF_STRINGS, SHF_WRITE, SHN_UNDEF,
  SHT_NOBITS, SHT_RELA, SHT_SYMTAB, STB_LOCAL, STT_FILE, STT_FUNC, STT_GNU_IFUNC, STT_OBJECT, STT_TLS,
  type ElfSymbol, type Rela, type Section,
} from '../elf/index.js';

/** Section flag of thread-local storage (.tdata, .tbss). */
export const SHF_TLS = 0x400n;

/** A function or data object of the object file. */
export interface ObjSymbol {
  sym: ElfSymbol;
  name: string;
  /** Name without gcc's numeric suffixes (`.isra.N` -> `.isra`, `n.0` -> `n`). */
  key: string;
  section: Section;
  kind: 'func' | 'data';
  global: boolean;
}

/** A relocatable object, indexed for diffing. */
export class DiffObject {
  readonly symbols: ElfSymbol[];
  /** Functions and data objects, by symbol index. */
  readonly defined = new Map<number, ObjSymbol>();
  /** Relocations applying to each section (by section index), in file order. */
  readonly relocs = new Map<number, Rela[]>();
  /** The source file name gcc recorded (first STT_FILE symbol). */
  readonly sourceName: string | undefined;
  /** Defined symbols of each section, by address (symbolAt is asked once per relocation). */
  private readonly bySection = new Map<number, ObjSymbol[]>();
  private readonly hexCache = new Map<number, string>();

  private constructor(readonly path: string, readonly elf: ElfFile) {
    const tab = elf.sections.find((s) => s.type === SHT_SYMTAB);
    if (!tab) fail('EINVAL', `${path} has no symbol table: give the object gcc wrote (not a stripped one)`);
    this.symbols = readSymbols(elf, tab);
    this.sourceName = this.symbols.find((s) => s.type === STT_FILE)?.name;
    for (const r of elf.sections) {
      if (r.type !== SHT_RELA) continue;
      const target = elf.sections[r.info];
      if (!target || (target.flags & SHF_ALLOC) === 0n) continue;
      const list = readRelas(elf, r);
      for (const e of list) {
        if (e.sym >= this.symbols.length) fail('EINVAL', `${path}: relocation in ${r.name} names symbol ${e.sym}, past the symbol table`);
      }
      this.relocs.set(r.info, [...(this.relocs.get(r.info) ?? []), ...list]);
    }
    const perSection = new Map<number, string[]>();
    for (const s of this.symbols) {
      if (s.shndx === SHN_UNDEF || s.shndx >= elf.sections.length || !s.name) continue;
      const sec = elf.sections[s.shndx]!;
      if ((sec.flags & SHF_ALLOC) === 0n) continue;
      const func = s.type === STT_FUNC || s.type === STT_GNU_IFUNC;
      if (!func && s.type !== STT_OBJECT && s.type !== STT_TLS) continue;
      this.defined.set(s.index, { sym: s, name: s.name, key: symbolKey(s.name), section: sec, kind: func ? 'func' : 'data', global: s.bind !== STB_LOCAL });
      // An IFUNC symbol names its resolver's code: not a second function.
      if (s.type === STT_FUNC) perSection.set(sec.index, [...(perSection.get(sec.index) ?? []), s.name]);
    }
    for (const d of this.defined.values()) this.bySection.set(d.section.index, [...(this.bySection.get(d.section.index) ?? []), d]);
    for (const list of this.bySection.values()) list.sort((a, b) => (a.sym.value < b.sym.value ? -1 : a.sym.value > b.sym.value ? 1 : 0));
    for (const [idx, names] of perSection) {
      if (names.length > 1) {
        fail('EINVAL', `${path}: section ${elf.sections[idx]!.name} holds several functions (${names.slice(0, 4).join(', ')}); compile ORIG and PATCHED objects with -ffunction-sections -fdata-sections`);
      }
    }
  }

  /** Read and index `path`; not a relocatable x86-64 object: EINVAL naming it. */
  static open(path: string, bytes: Uint8Array): DiffObject {
    let elf: ElfFile;
    try {
      elf = ElfFile.parse(bytes, path);
    } catch (e) {
      const err = toHotstackError(e);
      throw new HotstackError(err.errno, `${path}: ${err.message}`);
    }
    if (elf.header.type !== ET_REL) fail('EINVAL', `${path} is not a relocatable object (ELF type ${elf.header.type}): give the .o files gcc -c wrote`);
    return new DiffObject(path, elf);
  }

  /** Functions of the object. */
  functions(): ObjSymbol[] {
    return [...this.defined.values()].filter((d) => d.kind === 'func');
  }

  /** Data objects of the object. */
  data(): ObjSymbol[] {
    return [...this.defined.values()].filter((d) => d.kind === 'data');
  }

  /** The bytes of a defined symbol (zeros for .bss). */
  bytesOf(d: ObjSymbol): Uint8Array {
    if (d.section.type === SHT_NOBITS) return new Uint8Array(Number(d.sym.size));
    const data = this.elf.data(d.section);
    const start = Number(d.sym.value);
    const end = start + Number(d.sym.size);
    if (end > data.length) fail('EINVAL', `${this.path}: symbol ${d.name} (${d.sym.size} bytes at ${d.sym.value}) lies outside its section ${d.section.name}`);
    return data.subarray(start, end);
  }

  /** Relocations inside a defined symbol's bytes, with offsets relative to its start. */
  relocsOf(d: ObjSymbol): Rela[] {
    const start = d.sym.value;
    const end = start + d.sym.size;
    return (this.relocs.get(d.section.index) ?? [])
      .filter((r) => r.offset >= start && r.offset < end)
      .map((r) => ({ ...r, offset: r.offset - start }));
  }

  /** The function or data object at `offset` of section `index` (the last one starting at or before it). */
  symbolAt(index: number, offset: bigint): ObjSymbol | undefined {
    const list = this.bySection.get(index);
    if (!list) return undefined;
    let best: ObjSymbol | undefined;
    for (const d of list) {
      if (d.sym.value > offset) break;
      best = d;
    }
    // A relocation may point just before its object (addend -5 of `cmpl $0, x(%rip)`): the first one.
    return best ?? list[0];
  }

  /** A section's bytes in hex (read-only data is compared by contents), computed once. */
  sectionHex(sec: Section): string {
    let h = this.hexCache.get(sec.index);
    if (h === undefined) {
      h = sec.type === SHT_NOBITS ? `nobits${sec.size}` : toHex(this.elf.data(sec));
      this.hexCache.set(sec.index, h);
    }
    return h;
  }
}

/** gcc's numeric suffixes dropped: `f.isra.0` and `f.isra.3` correlate, `count.1` and `count.4` too. */
export function symbolKey(name: string): string {
  return name.replace(/\.\d+(?=\.|$)/g, '');
}

/** Special statics never correlated by name: their contents are what counts. */
export function isSpecialStatic(name: string): boolean {
  return name.startsWith('.L') || /^__(func|FUNCTION|PRETTY_FUNCTION)__(\.\d+)?$/.test(name) || /^CSWTCH\.\d+$/.test(name);
}

export type SectionKind = 'text' | 'rodata' | 'strings' | 'data' | 'tls' | 'other';

/** What a section holds, for the diff's rules. */
export function sectionKind(sec: Section): SectionKind {
  if ((sec.flags & SHF_ALLOC) === 0n) return 'other';
  if ((sec.flags & SHF_TLS) !== 0n) return 'tls';
  if ((sec.flags & SHF_EXECINSTR) !== 0n) return 'text';
  if ((sec.flags & SHF_WRITE) !== 0n) return 'data';
  if ((sec.flags & SHF_STRINGS) !== 0n) return 'strings';
  return 'rodata';
}

/** Whether a relocation is relative to the place (its addend includes the distance to the end of the field). */
export function isPcRelative(type: number): boolean {
  return type === R_X86_64.PC32 || type === R_X86_64.PLT32 || type === R_X86_64.GOTPCREL || type === R_X86_64.GOTPCRELX
    || type === R_X86_64.REX_GOTPCRELX || type === R_X86_64.PC64;
}

/** Bytes a relocation writes, and bytes before it the linker may rewrite (GOTPCRELX relaxation). */
export function relocSpan(type: number): { before: number; width: number } {
  if (type === R_X86_64['64'] || type === R_X86_64.PC64) return { before: 0, width: 8 };
  if (type === R_X86_64.GOTPCRELX || type === R_X86_64.REX_GOTPCRELX) return { before: 3, width: 4 };
  // TLS models the linker relaxes (GOTTPOFF 22, TLSGD 19, TLSLD 20) rewrite the instruction around them.
  if (type === 19 || type === 20 || type === 22) return { before: 4, width: 8 };
  return { before: 0, width: 4 };
}
