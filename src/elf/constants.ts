/** ELF constants (the subset hotstack needs), named as in elf.h. */
export const ELFCLASS64 = 2;
export const ELFDATA2LSB = 1;
export const EV_CURRENT = 1;
export const ELFOSABI_NONE = 0;
export const ELFOSABI_FREEBSD = 9;

export const ET_REL = 1;
export const ET_EXEC = 2;
export const ET_DYN = 3;

export const EM_X86_64 = 62;

export const EHDR_SIZE = 64;
export const SHDR_SIZE = 64;
export const PHDR_SIZE = 56;
export const SYM_SIZE = 24;
export const RELA_SIZE = 24;

export const SHN_UNDEF = 0;
export const SHN_LORESERVE = 0xff00;
export const SHN_ABS = 0xfff1;
export const SHN_COMMON = 0xfff2;

export const SHT_PROGBITS = 1;
export const SHT_SYMTAB = 2;
export const SHT_STRTAB = 3;
export const SHT_RELA = 4;
export const SHT_NOTE = 7;
export const SHT_NOBITS = 8;
export const SHT_REL = 9;
export const SHT_DYNSYM = 11;

export const SHF_WRITE = 0x1n;
export const SHF_ALLOC = 0x2n;
export const SHF_EXECINSTR = 0x4n;
export const SHF_MERGE = 0x10n;
export const SHF_STRINGS = 0x20n;
export const SHF_COMPRESSED = 0x800n;

/** Chdr ch_type of a compressed section. */
export const ELFCOMPRESS_ZLIB = 1;

export const PT_LOAD = 1;
export const PT_DYNAMIC = 2;
export const PT_NOTE = 4;


export const STB_LOCAL = 0;
export const STB_GLOBAL = 1;
export const STB_WEAK = 2;

export const STT_NOTYPE = 0;
export const STT_OBJECT = 1;
export const STT_FUNC = 2;
export const STT_SECTION = 3;
export const STT_FILE = 4;
export const STT_TLS = 6;
export const STT_GNU_IFUNC = 10;

export const NT_GNU_BUILD_ID = 3;

/** x86-64 relocation types. */
export const R_X86_64 = {
  NONE: 0,
  '64': 1,
  PC32: 2,
  GOT32: 3,
  PLT32: 4,
  GOTPCREL: 9,
  '32': 10,
  '32S': 11,
  PC64: 24,
  GOTPCRELX: 41,
  REX_GOTPCRELX: 42,
} as const;

/** x86-64 relocation types of thread-local storage (none is supported in payloads; named in messages). */
export const R_X86_64_TLS = {
  DTPMOD64: 16,
  DTPOFF64: 17,
  TPOFF64: 18,
  TLSGD: 19,
  TLSLD: 20,
  DTPOFF32: 21,
  GOTTPOFF: 22,
  TPOFF32: 23,
  GOTPC32_TLSDESC: 34,
  TLSDESC_CALL: 35,
  TLSDESC: 36,
} as const;

export const RELOC_NAMES: Record<number, string> = Object.fromEntries(
  Object.entries({ ...R_X86_64, ...R_X86_64_TLS }).map(([k, v]) => [v, `R_X86_64_${k}`]),
);
