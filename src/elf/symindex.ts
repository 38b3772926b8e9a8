/**
 * Name lookup over an object's symbol table, the way payloads resolve
 * against a base: globals by name, locals as `FILE#NAME`, and a local by
 * plain name when no global has that name and it is the only local so named.
 */
import {
  SHN_UNDEF, SHT_DYNSYM, SHT_SYMTAB, STB_GLOBAL, STB_LOCAL, STT_FILE, STT_FUNC, STT_GNU_IFUNC, STT_SECTION, STT_TLS,
} from './constants.js';
import type { ElfFile, Section } from './file.js';
import { readSymbols, type ElfSymbol } from './symbols.js';

const SHT_GNU_VERSYM = 0x6fffffff;

export interface IndexedSymbol {
  name: string;
  /** STT_GNU_IFUNC: the value is a resolver that returns the implementation. */
  isIfunc: boolean;
  /** Link-time value. */
  value: bigint;
  size: bigint;
  isFunc: boolean;
  global: boolean;
}

/**
 * The symbols of a `.dynsym` without those of a hidden (non-default)
 * version: its names carry no version, so `exp` of GLIBC_2.2.5 (kept for
 * old programs) and `exp` of GLIBC_2.29 would otherwise be one name, and
 * whichever the table lists last would win. An unversioned name binds to
 * the default version, as ld.so binds it.
 */
export function defaultVersionSymbols(elf: ElfFile, tab: Section): ElfSymbol[] {
  const syms = readSymbols(elf, tab);
  const versym = elf.sections.find((s) => s.type === SHT_GNU_VERSYM && s.link === tab.index);
  const vers = versym && elf.inFile(versym) ? elf.data(versym) : undefined;
  const hidden = (i: number): boolean => !!vers && 2 * i + 1 < vers.length && (vers[2 * i + 1]! & 0x80) !== 0;
  return syms.filter((s) => !hidden(s.index));
}

export class SymbolIndex {
  private readonly globals = new Map<string, IndexedSymbol>();
  private readonly locals = new Map<string, IndexedSymbol>();
  /** Plain-name locals: null when ambiguous. */
  private readonly plainLocals = new Map<string, IndexedSymbol | null>();
  /**
   * Globals by plain name when their table names them with their default
   * version (`exp@@GLIBC_2.29`, as a stripped library's debug file does):
   * an unversioned name binds to the default version, as ld.so binds it.
   */
  private readonly defaults = new Map<string, IndexedSymbol>();
  /** IFUNC symbols by link-time value (their resolver's address), globals first. */
  private readonly ifuncs = new Map<bigint, IndexedSymbol[]>();
  readonly count: number;

  constructor(symbols: ElfSymbol[]) {
    let n = 0;
    for (const s of symbols) {
      if (s.index === 0 || s.shndx === SHN_UNDEF || !s.name) continue;
      if (s.type === STT_FILE || s.type === STT_SECTION || s.type === STT_TLS) continue;
      const rec: IndexedSymbol = {
        name: s.name,
        isIfunc: s.type === STT_GNU_IFUNC,
        value: s.value,
        size: s.size,
        isFunc: s.type === STT_FUNC || s.type === STT_GNU_IFUNC,
        global: s.bind !== STB_LOCAL,
      };
      n++;
      if (rec.isIfunc) {
        const at = this.ifuncs.get(rec.value);
        if (at) at.push(rec);
        else this.ifuncs.set(rec.value, [rec]);
      }
      if (rec.global) {
        // Prefer a strong definition over a weak one seen first.
        if (!this.globals.has(s.name) || s.bind === STB_GLOBAL) this.globals.set(s.name, rec);
        const at = s.name.indexOf('@@');
        if (at > 0 && (!this.defaults.has(s.name.slice(0, at)) || s.bind === STB_GLOBAL)) this.defaults.set(s.name.slice(0, at), rec);
      } else {
        if (s.file !== undefined) this.locals.set(`${s.file}#${s.name}`, rec);
        this.plainLocals.set(s.name, this.plainLocals.has(s.name) ? null : rec);
      }
    }
    this.count = n;
  }

  /** Index of `.symtab`, else `.dynsym` (default versions only); empty when the object has neither. */
  static fromElf(elf: ElfFile): SymbolIndex {
    const sym = elf.sections.find((s) => s.type === SHT_SYMTAB);
    if (sym) return new SymbolIndex(readSymbols(elf, sym));
    const dyn = elf.sections.find((s) => s.type === SHT_DYNSYM);
    return new SymbolIndex(dyn ? defaultVersionSymbols(elf, dyn) : []);
  }

  /**
   * Only the exported dynamic symbols (what other objects of a process
   * offer), at their default version: `memcpy@GLIBC_2.2.5` is hidden
   * behind `memcpy@@GLIBC_2.14` as the dynamic linker would.
   */
  static dynamicOf(elf: ElfFile): SymbolIndex {
    const tab = elf.sections.find((s) => s.type === SHT_DYNSYM);
    if (!tab) return new SymbolIndex([]);
    return new SymbolIndex(defaultVersionSymbols(elf, tab).filter((s) => s.bind !== STB_LOCAL));
  }

  lookup(name: string): IndexedSymbol | undefined {
    const g = this.globals.get(name) ?? this.defaults.get(name);
    if (g) return g;
    const l = this.locals.get(name);
    if (l) return l;
    return this.plainLocals.get(name) ?? undefined;
  }

  hasGlobal(name: string): boolean {
    return this.globals.has(name) || this.defaults.has(name);
  }

  /** The IFUNC symbols whose resolver is at link-time address `value` (aliases share it), globals first; empty when none. */
  ifuncsAt(value: bigint): IndexedSymbol[] {
    return [...(this.ifuncs.get(value) ?? [])].sort((a, b) => Number(b.global) - Number(a.global));
  }
}
