/**
 * Symbol tables. Local symbols remember the STT_FILE symbol before them,
 * so a static function can be named `FILE#NAME` as Xen does.
 */
import { fail } from '../errors.js';
import { cString } from './bytes.js';
import type { ElfFile, Section } from './file.js';
import { STB_LOCAL, STT_FILE, SYM_SIZE, SHT_STRTAB } from './constants.js';

export interface ElfSymbol {
  index: number;
  name: string;
  value: bigint;
  size: bigint;
  bind: number;
  type: number;
  other: number;
  shndx: number;
  /** For local symbols: name of the preceding STT_FILE symbol, if any. */
  file: string | undefined;
}

/**
 * Check a string table the way Xen does: SHT_STRTAB, non-empty, first and
 * last byte NUL. Returns its bytes.
 */
export function stringTable(elf: ElfFile, index: number, what: string): Uint8Array {
  const sec = elf.sections[index];
  if (!sec) fail('EINVAL', `${what}: section index ${index} does not exist`);
  if (sec.type !== SHT_STRTAB) fail('EINVAL', `${what} (section [${index}]) is not of type SHT_STRTAB`, sec.headerOffset);
  if (sec.size === 0n) fail('EINVAL', `${what} (section [${index}]) is empty`, sec.headerOffset);
  if (!elf.inFile(sec)) fail('EINVAL', `${what} (section [${index}]) lies past the end of the file`, sec.headerOffset);
  const t = elf.data(sec);
  if (t[0] !== 0 || t[t.length - 1] !== 0) {
    fail('EINVAL', `${what} (section [${index}]) must start and end with a NUL byte`, Number(sec.offset));
  }
  return t;
}

/** Parse a SHT_SYMTAB/SHT_DYNSYM section with its linked string table. */
export function readSymbols(elf: ElfFile, symtab: Section): ElfSymbol[] {
  if (symtab.link >= elf.sections.length) {
    fail('EINVAL', `symbol table [${symtab.index}] links to string table ${symtab.link}, past the last section`, symtab.headerOffset);
  }
  if (symtab.size === 0n || symtab.entsize < BigInt(SYM_SIZE) || symtab.size % symtab.entsize !== 0n) {
    fail('EINVAL', `symbol table [${symtab.index}] has a corrupt header (size ${symtab.size}, entsize ${symtab.entsize})`, symtab.headerOffset);
  }
  const data = elf.data(symtab);
  const strtab = stringTable(elf, symtab.link, 'symbol string table');
  const ent = Number(symtab.entsize);
  const n = data.length / ent;
  const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const out: ElfSymbol[] = [];
  let file: string | undefined;
  for (let i = 0; i < n; i++) {
    const o = i * ent;
    const nameOff = dv.getUint32(o, true);
    const info = dv.getUint8(o + 4);
    if (nameOff >= strtab.length) {
      fail('EINVAL', `symbol [${i}] name offset ${nameOff} is outside the string table (${strtab.length} bytes)`, Number(symtab.offset) + o);
    }
    const sym: ElfSymbol = {
      index: i,
      name: cString(strtab, nameOff, `symbol [${i}] name`),
      bind: info >> 4,
      type: info & 0xf,
      other: dv.getUint8(o + 5),
      shndx: dv.getUint16(o + 6, true),
      value: dv.getBigUint64(o + 8, true),
      size: dv.getBigUint64(o + 16, true),
      file: undefined,
    };
    if (sym.type === STT_FILE) file = sym.name;
    else if (sym.bind === STB_LOCAL) sym.file = file;
    out.push(sym);
  }
  return out;
}
