/**
 * Payload rules that concern symbols and relocations but need no target,
 * run by the parse stages (parse.ts); the linker only adds the rules that
 * need addresses (resolution, values that fit their field).
 */
import { fail } from '../errors.js';
import {
  SHF_ALLOC, SHN_ABS, SHN_COMMON, SHN_LORESERVE, SHN_UNDEF, SHT_REL, SHT_RELA, type ElfSymbol, type Rela, type Section,
} from '../elf/index.js';
import { arch, type RelocKind } from '../arch/index.js';
import type { CheckedElf } from './elf-checks.js';
import { XEN_ONLY_SECTIONS } from './sections.js';

/** File offset of a symbol's entry, for messages. */
export function symbolOffset(c: CheckedElf, s: ElfSymbol): number {
  return Number(c.symtab.offset) + s.index * Number(c.symtab.entsize);
}

/** Section-index rules of one symbol: common (EINVAL), reserved (EOPNOTSUPP), out of range (EINVAL). */
export function checkSymbolSection(c: CheckedElf, s: ElfSymbol): void {
  const at = symbolOffset(c, s);
  const what = s.name || `[${s.index}]`;
  if (s.shndx === SHN_COMMON) fail('EINVAL', `symbol ${what} is a common symbol (compile with -fno-common)`, at);
  if (s.shndx === SHN_UNDEF || s.shndx === SHN_ABS) return;
  if (s.shndx >= SHN_LORESERVE) fail('EOPNOTSUPP', `symbol ${what} has reserved section index 0x${s.shndx.toString(16)}`, at);
  if (s.shndx >= c.elf.sections.length) fail('EINVAL', `symbol ${what} refers to section ${s.shndx}, past the last section`, at);
}

/** The section-index rules of every symbol but the null one. */
export function checkSymbols(c: CheckedElf): void {
  for (let i = 1; i < c.symbols.length; i++) checkSymbolSection(c, c.symbols[i]!);
}

/**
 * Relocation sections that apply to loaded sections, after Xen's skip
 * rules (target out of range or not allocated: skipped), with the section
 * rules: symbol table link (EINVAL), REL instead of RELA (EOPNOTSUPP).
 */
export function activeRelocSections(c: CheckedElf): { rel: Section; target: Section }[] {
  const out: { rel: Section; target: Section }[] = [];
  for (const r of c.elf.sections) {
    if (r.type !== SHT_RELA && r.type !== SHT_REL) continue;
    if (r.info >= c.elf.sections.length) continue;
    const target = c.elf.sections[r.info]!;
    if ((target.flags & SHF_ALLOC) === 0n) continue; // debug info: skipped
    if (r.link !== c.symtab.index) {
      fail('EINVAL', `relocation section [${r.index}] ${r.name} links to section ${r.link}, not the symbol table ${c.symtab.index}`, r.headerOffset);
    }
    if (r.type === SHT_REL) fail('EOPNOTSUPP', `relocation section [${r.index}] ${r.name} is SHT_REL; only RELA is supported`, r.headerOffset);
    out.push({ rel: r, target });
  }
  return out;
}

/** One entry's rules: symbol 0 / out of range, offset inside the target, supported type. */
export function checkRela(c: CheckedElf, rel: Section, target: Section, r: Rela): RelocKind {
  const what = relaLabel(rel, r);
  if (r.sym === 0) fail('EOPNOTSUPP', `${what} uses symbol 0 (STN_UNDEF)`, r.at);
  if (r.sym >= c.symbols.length) fail('EINVAL', `${what} refers to symbol ${r.sym}, past the end of the symbol table`, r.at);
  const kind = arch.relocKind(r.type);
  const width = kind ? arch.relocWidth(kind) : 4;
  if (r.offset + BigInt(width) > target.size || target.size === 0n) {
    fail('EINVAL', `${what}: offset 0x${r.offset.toString(16)} is outside section ${target.name} (${target.size} bytes)`, r.at);
  }
  if (!kind && arch.isTlsReloc(r.type)) {
    const name = c.symbols[r.sym]?.name || `symbol ${r.sym}`;
    fail(
      'EOPNOTSUPP',
      `${what} against ${name}: thread-local storage (a __thread or thread_local variable) cannot be reached from a payload: ` +
        'each thread\'s copy lives in a block the dynamic linker laid out, which a payload is not linked into; reach it through a function of the program (one returning its address)',
      r.at,
    );
  }
  if (!kind) fail('EOPNOTSUPP', `${what}: unsupported relocation type`, r.at);
  return kind;
}

/** How a relocation entry is named in messages. */
export function relaLabel(rel: Section, r: Rela): string {
  return `relocation at 0x${r.at.toString(16)} (${arch.relocName(r.type)} in ${rel.name})`;
}

/** Xen-only hypervisor tables: accepted, and their size must be a whole number of entries (EINVAL). */
export function checkXenOnlySections(c: CheckedElf): void {
  for (const [n, size] of Object.entries(XEN_ONLY_SECTIONS)) {
    const s = c.elf.section(n);
    if (s && size && s.size % BigInt(size) !== 0n) fail('EINVAL', `${n} is ${s.size} bytes, not a multiple of its ${size}-byte entries`, s.headerOffset);
  }
}
