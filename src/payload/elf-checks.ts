/**
 * ELF validation of an uploaded payload (untrusted input), one small check
 * per rule, in Xen's order (livepatch_elf_load): header, section table,
 * sections, symbol table, names. Relocation and symbol-value rules are
 * checked where they are used (src/core/linker.ts).
 */
import { fail } from '../errors.js';
import {
  ByteView, EHDR_SIZE, ELFOSABI_FREEBSD, ELFOSABI_NONE, ET_REL, EV_CURRENT, SHDR_SIZE,
  RELA_SIZE, SHF_ALLOC, SHF_EXECINSTR, SHF_WRITE, SHN_UNDEF, SHT_NOBITS, SHT_REL, SHT_RELA, SHT_SYMTAB, SYM_SIZE, ElfFile, readHeader, readSymbols,
  stringTable, type ElfHeader, type ElfSymbol, type Section,
} from '../elf/index.js';
import { MAX_BSS, MAX_RELOCATIONS, MAX_SYMBOLS } from './sections.js';
import { arch } from '../arch/index.js';

const MAX_SECTIONS = 1024;
/** Largest alignment of a loaded section: a page. */
const MAX_ALIGN = 4096n;

/** Header rules: type, version, ABI, machine, no program headers (EOPNOTSUPP); section table bounds (EINVAL). */
export function checkHeader(bytes: Uint8Array): ElfHeader {
  const view = new ByteView(bytes, 'payload');
  const h = readHeader(view);
  if (h.version !== EV_CURRENT || h.identVersion !== EV_CURRENT) fail('EOPNOTSUPP', `ELF version ${h.version} is not EV_CURRENT`, 20);
  if (h.abiversion !== 0) fail('EOPNOTSUPP', `ELF ABI version ${h.abiversion} is not 0`, 8);
  if (h.osabi !== ELFOSABI_NONE && h.osabi !== ELFOSABI_FREEBSD) fail('EOPNOTSUPP', `ELF OS ABI ${h.osabi} is neither NONE nor FreeBSD`, 7);
  if (h.type !== ET_REL) fail('EOPNOTSUPP', `ELF type ${h.type} is not ET_REL: a payload is a relocatable object (ld -r)`, 16);
  if (h.phnum !== 0) fail('EOPNOTSUPP', `a payload has no program headers (e_phnum=${h.phnum})`, 56);
  if (h.machine !== arch.machine) fail('EOPNOTSUPP', `ELF machine ${h.machine} is not ${arch.name} (${arch.machine})`, 18);
  if (h.shstrndx === SHN_UNDEF) fail('EINVAL', 'section name table index e_shstrndx is undefined', 62);
  if (h.shnum >= MAX_SECTIONS) fail('EOPNOTSUPP', `too many sections (${h.shnum}; at most ${MAX_SECTIONS - 1})`, 60);
  if (h.shstrndx >= h.shnum) fail('EINVAL', `section name table index ${h.shstrndx} is past the last section (${h.shnum})`, 62);
  if (h.shoff >= BigInt(bytes.length)) fail('EINVAL', `section header offset 0x${h.shoff.toString(16)} is past the end of the payload`, 40);
  if (h.shentsize < SHDR_SIZE) fail('EINVAL', `section header size ${h.shentsize} is smaller than ${SHDR_SIZE}`, 58);
  if ((BigInt(bytes.length) - h.shoff) / BigInt(h.shentsize) < BigInt(h.shnum)) {
    fail('EINVAL', `section header table (${h.shnum} entries) runs past the end of the payload`, 40);
  }
  return h;
}

/** Per-section rules: data inside the file, power-of-two alignment, W^X, bounded .bss. */
export function checkSection(elf: ElfFile, s: Section): void {
  const len = BigInt(elf.bytes.length);
  if (s.offset < BigInt(EHDR_SIZE) || (s.type !== SHT_NOBITS && (s.offset > len || s.offset + s.size > len))) {
    fail('EINVAL', `section [${s.index}] data ${s.offset < BigInt(EHDR_SIZE) ? 'overlaps the ELF header' : 'lies past the end of the payload'} (offset 0x${s.offset.toString(16)}, size ${s.size})`, s.headerOffset);
  }
  if (s.addralign !== 0n && (s.addralign & (s.addralign - 1n)) !== 0n) {
    fail('EOPNOTSUPP', `section [${s.index}] alignment ${s.addralign} is not a power of two`, s.headerOffset);
  }
  if ((s.flags & SHF_WRITE) !== 0n && (s.flags & SHF_EXECINSTR) !== 0n) {
    fail('EOPNOTSUPP', `section [${s.index}] ${s.name} is both writable and executable (W^X)`, s.headerOffset);
  }
  // Any loaded NOBITS, not only a writable one: its size is memory we must map.
  // And any other NOBITS too: a non-allocated one named .livepatch.funcs, a
  // hook section, .modinfo or a note would otherwise be read as that many
  // zero bytes (1 TiB asked for by a 64-byte header).
  if (s.type === SHT_NOBITS && s.size > BigInt(MAX_BSS)) {
    const what = (s.flags & SHF_ALLOC) !== 0n ? '.bss' : 'non-allocated NOBITS section';
    fail('EINVAL', `section [${s.index}] ${s.name} is a ${s.size}-byte ${what}, larger than ${MAX_BSS} (section header at file offset 0x${s.headerOffset.toString(16)})`, s.headerOffset);
  }
  if ((s.flags & SHF_ALLOC) !== 0n && s.addralign > MAX_ALIGN) {
    fail('EOPNOTSUPP', `section [${s.index}] ${s.name} asks for ${s.addralign}-byte alignment; at most ${MAX_ALIGN} (a page) is supported`, s.headerOffset);
  }
}

/**
 * Symbol and relocation counts, from the section headers (before any table
 * is parsed): more than MAX_SYMBOLS symbols, or more than MAX_RELOCATIONS
 * entries applying to loaded sections, is E2BIG.
 */
export function checkCounts(elf: ElfFile, symtab: Section): void {
  if (symtab.entsize >= BigInt(SYM_SIZE) && symtab.size / symtab.entsize > BigInt(MAX_SYMBOLS)) {
    fail('E2BIG', `symbol table [${symtab.index}] holds ${symtab.size / symtab.entsize} symbols; at most ${MAX_SYMBOLS}`, symtab.headerOffset);
  }
  let relocs = 0n;
  for (const s of elf.sections) {
    if (s.type !== SHT_RELA && s.type !== SHT_REL) continue;
    // Relocations of debug sections are skipped unread (symbols-relocations.ts), so they do not count.
    const target = elf.sections[s.info];
    if (!target || (target.flags & SHF_ALLOC) === 0n) continue;
    relocs += s.size / BigInt(RELA_SIZE);
    if (relocs > BigInt(MAX_RELOCATIONS)) {
      fail('E2BIG', `relocation sections hold more than ${MAX_RELOCATIONS} entries (at section [${s.index}] ${s.name})`, s.headerOffset);
    }
  }
}

/** Exactly one SHT_SYMTAB: none EINVAL, several EOPNOTSUPP. */
export function findSymtab(elf: ElfFile): Section {
  const tabs = elf.sections.filter((s) => s.index !== 0 && s.type === SHT_SYMTAB);
  if (tabs.length === 0) fail('EINVAL', 'no symbol table (.symtab) in the payload');
  if (tabs.length > 1) fail('EOPNOTSUPP', `${tabs.length} symbol tables in the payload; exactly one is supported`, tabs[1]!.headerOffset);
  return tabs[0]!;
}

export interface CheckedElf {
  elf: ElfFile;
  symtab: Section;
  symbols: ElfSymbol[];
}

/** All structural rules; returns the parsed file with its symbols. */
export function checkPayloadElf(bytes: Uint8Array): CheckedElf {
  checkHeader(bytes);
  const elf = ElfFile.parse(bytes, 'payload');
  for (const s of elf.sections) if (s.index !== 0) checkSection(elf, s);
  const symtab = findSymtab(elf);
  checkCounts(elf, symtab);
  // Section names: Xen checks .shstrtab and every name offset before symbols.
  stringTable(elf, elf.header.shstrndx, 'section name table');
  if (!elf.namesOk) fail('EINVAL', 'a section name lies outside the section name table');
  const symbols = readSymbols(elf, symtab);
  return { elf, symtab, symbols };
}
