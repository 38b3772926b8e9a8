/**
 * A tiny, independent ELF64 little-endian reader for building malformed
 * payloads by mutating valid fixtures.  Deliberately does not use
 * hotstack's own ELF code (src/elf), so a bug there cannot hide a bug in
 * the tests: offsets are computed from the ELF spec directly.
 *
 * Every mutation works on a copy: `edit()` returns a fresh buffer.
 */

export const EHDR = {
  ident: 0, class: 4, data: 5, identVersion: 6, osabi: 7, abiversion: 8,
  type: 16, machine: 18, version: 20, entry: 24, phoff: 32, shoff: 40, flags: 48,
  ehsize: 52, phentsize: 54, phnum: 56, shentsize: 58, shnum: 60, shstrndx: 62,
} as const;

/** Field offsets inside one Elf64_Shdr (64 bytes). */
export const SHDR = {
  name: 0, type: 4, flags: 8, addr: 16, offset: 24, size: 32, link: 40, info: 44, addralign: 48, entsize: 56,
} as const;
export const SHDR_SIZE = 64;

/** Field offsets inside one Elf64_Sym (24 bytes). */
export const SYM = { name: 0, info: 4, other: 5, shndx: 6, value: 8, size: 16 } as const;
export const SYM_SIZE = 24;

/** Field offsets inside one Elf64_Rela (24 bytes). */
export const RELA = { offset: 0, info: 8, addend: 16 } as const;
export const RELA_SIZE = 24;

export const SHT = { NULL: 0, PROGBITS: 1, SYMTAB: 2, STRTAB: 3, RELA: 4, NOTE: 7, NOBITS: 8, REL: 9 } as const;
export const SHF = { WRITE: 1n, ALLOC: 2n, EXECINSTR: 4n } as const;

export interface Sec {
  index: number;
  /** File offset of this section's header. */
  hdr: number;
  nameOff: number;
  name: string;
  type: number;
  flags: bigint;
  offset: number;
  size: number;
  link: number;
  info: number;
  addralign: number;
  entsize: number;
}

export interface Sym {
  index: number;
  /** File offset of this symbol's entry. */
  at: number;
  nameOff: number;
  name: string;
  info: number;
  shndx: number;
  value: bigint;
  size: bigint;
}

export interface Rel {
  /** File offset of this relocation entry. */
  at: number;
  offset: bigint;
  sym: number;
  type: number;
  addend: bigint;
}

function cstr(b: Buffer, off: number): string {
  const end = b.indexOf(0, off);
  return b.toString('latin1', off, end < 0 ? b.length : end);
}

/** A parsed, valid relocatable object (throws on anything odd: fixtures are valid). */
export class PayloadElf {
  readonly bytes: Buffer;
  readonly shoff: number;
  readonly shnum: number;
  readonly shstrndx: number;
  readonly sections: Sec[];
  readonly symtab: Sec;
  readonly symbols: Sym[];

  constructor(bytes: Uint8Array) {
    const b = Buffer.from(bytes);
    this.bytes = b;
    if (b.readUInt32BE(0) !== 0x7f454c46 || b[4] !== 2 || b[5] !== 1) throw new Error('not an ELF64 LE file');
    this.shoff = Number(b.readBigUInt64LE(EHDR.shoff));
    this.shnum = b.readUInt16LE(EHDR.shnum);
    this.shstrndx = b.readUInt16LE(EHDR.shstrndx);
    const raw: Omit<Sec, 'name'>[] = [];
    for (let i = 0; i < this.shnum; i++) {
      const h = this.shoff + i * SHDR_SIZE;
      raw.push({
        index: i, hdr: h, nameOff: b.readUInt32LE(h + SHDR.name), type: b.readUInt32LE(h + SHDR.type),
        flags: b.readBigUInt64LE(h + SHDR.flags), offset: Number(b.readBigUInt64LE(h + SHDR.offset)),
        size: Number(b.readBigUInt64LE(h + SHDR.size)), link: b.readUInt32LE(h + SHDR.link),
        info: b.readUInt32LE(h + SHDR.info), addralign: Number(b.readBigUInt64LE(h + SHDR.addralign)),
        entsize: Number(b.readBigUInt64LE(h + SHDR.entsize)),
      });
    }
    const shstr = raw[this.shstrndx]!;
    this.sections = raw.map((s) => ({ ...s, name: cstr(b, shstr.offset + s.nameOff) }));
    const tabs = this.sections.filter((s) => s.type === SHT.SYMTAB);
    if (tabs.length !== 1) throw new Error(`${tabs.length} symbol tables`);
    this.symtab = tabs[0]!;
    const strtab = this.sections[this.symtab.link]!;
    this.symbols = [];
    for (let i = 0; i < this.symtab.size / SYM_SIZE; i++) {
      const at = this.symtab.offset + i * SYM_SIZE;
      const nameOff = b.readUInt32LE(at + SYM.name);
      this.symbols.push({
        index: i, at, nameOff, name: cstr(b, strtab.offset + nameOff), info: b[at + SYM.info]!,
        shndx: b.readUInt16LE(at + SYM.shndx), value: b.readBigUInt64LE(at + SYM.value), size: b.readBigUInt64LE(at + SYM.size),
      });
    }
  }

  /** The one section with this name (throws if absent or duplicated). */
  section(name: string): Sec {
    const hits = this.sections.filter((s) => s.name === name);
    if (hits.length !== 1) throw new Error(`section ${name}: ${hits.length} matches`);
    return hits[0]!;
  }

  has(name: string): boolean {
    return this.sections.some((s) => s.name === name);
  }

  symbol(name: string): Sym {
    const hits = this.symbols.filter((s) => s.name === name);
    if (hits.length !== 1) throw new Error(`symbol ${name}: ${hits.length} matches`);
    return hits[0]!;
  }

  /** The RELA section that applies to section `target` (by name). */
  relaFor(target: string): Sec {
    const t = this.section(target);
    const hits = this.sections.filter((s) => s.type === SHT.RELA && s.info === t.index);
    if (hits.length !== 1) throw new Error(`relocations for ${target}: ${hits.length} sections`);
    return hits[0]!;
  }

  relocations(rela: Sec): Rel[] {
    const out: Rel[] = [];
    for (let o = 0; o < rela.size; o += RELA_SIZE) {
      const at = rela.offset + o;
      const info = this.bytes.readBigUInt64LE(at + RELA.info);
      out.push({
        at, offset: this.bytes.readBigUInt64LE(at + RELA.offset), sym: Number(info >> 32n),
        type: Number(info & 0xffffffffn), addend: this.bytes.readBigInt64LE(at + RELA.addend),
      });
    }
    return out;
  }

  /** The relocation of section `target` at `offset`. */
  relocAt(target: string, offset: number): Rel {
    const r = this.relocations(this.relaFor(target)).find((x) => x.offset === BigInt(offset));
    if (!r) throw new Error(`no relocation at ${target}+${offset}`);
    return r;
  }

  /** File offset of a field of a section header. */
  shdrField(s: Sec | string, field: keyof typeof SHDR): number {
    const sec = typeof s === 'string' ? this.section(s) : s;
    return sec.hdr + SHDR[field];
  }

  /** A copy of the bytes, changed by `fn`. */
  edit(fn: (e: Editor) => void): Buffer {
    const e = new Editor(Buffer.from(this.bytes), this);
    fn(e);
    return e.bytes;
  }
}

/** Writers over a copy of a payload's bytes. */
export class Editor {
  constructor(public bytes: Buffer, readonly elf: PayloadElf) {}
  u8(off: number, v: number): this { this.bytes[off] = v; return this; }
  u16(off: number, v: number): this { this.bytes.writeUInt16LE(v, off); return this; }
  u32(off: number, v: number): this { this.bytes.writeUInt32LE(v >>> 0, off); return this; }
  u64(off: number, v: bigint | number): this { this.bytes.writeBigUInt64LE(BigInt.asUintN(64, BigInt(v)), off); return this; }
  i64(off: number, v: bigint): this { this.bytes.writeBigInt64LE(BigInt.asIntN(64, v), off); return this; }

  /** Set one field of a section header (u32 or u64 as the field is). */
  shdr(s: Sec | string, field: keyof typeof SHDR, v: bigint | number): this {
    const off = this.elf.shdrField(s, field);
    if (field === 'name' || field === 'type' || field === 'link' || field === 'info') return this.u32(off, Number(v));
    return this.u64(off, v);
  }

  /** Set one field of a symbol. */
  sym(s: Sym | string, field: keyof typeof SYM, v: bigint | number): this {
    const sym = typeof s === 'string' ? this.elf.symbol(s) : s;
    const off = sym.at + SYM[field];
    switch (field) {
      case 'name': return this.u32(off, Number(v));
      case 'info': case 'other': return this.u8(off, Number(v));
      case 'shndx': return this.u16(off, Number(v));
      default: return this.u64(off, v);
    }
  }

  /** Rewrite one relocation entry (fields left undefined keep their value). */
  rela(r: Rel, f: { offset?: bigint; sym?: number; type?: number; addend?: bigint }): this {
    this.u64(r.at + RELA.offset, f.offset ?? r.offset);
    this.u64(r.at + RELA.info, (BigInt(f.sym ?? r.sym) << 32n) | BigInt(f.type ?? r.type));
    this.i64(r.at + RELA.addend, f.addend ?? r.addend);
    return this;
  }

  /** Give section `s` the name of section `as` (same sh_name offset). */
  rename(s: Sec | string, as: string): this {
    return this.shdr(s, 'name', this.elf.section(as).nameOff);
  }

  /**
   * Give section `s` a brand-new name: a copy of .shstrtab with the name
   * added is appended to the file and the section header table points at
   * it (the old table stays as unused bytes).
   */
  renameTo(s: Sec | string, name: string): this {
    const shstr = this.elf.sections[this.elf.shstrndx]!;
    const old = this.bytes.subarray(shstr.offset, shstr.offset + shstr.size);
    const table = Buffer.concat([old, Buffer.from(name + '\0', 'latin1')]);
    const at = this.bytes.length;
    this.bytes = Buffer.concat([this.bytes, table]);
    this.shdr(shstr, 'offset', at).shdr(shstr, 'size', table.length);
    return this.shdr(s, 'name', old.length);
  }

  /** Byte of section data, by offset inside the section. */
  secByte(s: string, off: number, v: number): this {
    return this.u8(this.elf.section(s).offset + off, v);
  }

  truncate(len: number): this { this.bytes = this.bytes.subarray(0, len); return this; }
  append(extra: Uint8Array): this { this.bytes = Buffer.concat([this.bytes, extra]); return this; }
}

/** Offsets inside struct livepatch_func (payload-format.md). */
export const FUNC = {
  size: 104, name: 0, newAddr: 8, oldAddr: 16, newSize: 24, oldSize: 28, version: 32, expectFlags: 72, expectData: 73,
} as const;
