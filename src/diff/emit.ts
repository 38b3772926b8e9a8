/**
 * Write one planned pair as a relocatable x86-64 object: the copied
 * sections with their relocations rewritten (inside the payload: section
 * symbol + offset; outside: an undefined symbol named as the base names
 * it), the functions' and data's symbols, and a `.livepatch.funcs` record
 * per changed function, named by string and pointing at the new code. The
 * sizes, notes and build-id are `hotstack build`'s business afterwards.
 */
import { writeRelHeader } from '../builder/object.js';
import {
  alignUp, EHDR_SIZE, R_X86_64, RELA_SIZE, SHDR_SIZE, SHF_ALLOC, SHF_WRITE, SHT_NOBITS,
  SHT_PROGBITS, SHT_RELA, SHT_STRTAB, SHT_SYMTAB, STB_GLOBAL, STB_LOCAL, STT_NOTYPE, STT_SECTION, SYM_SIZE,
} from '../elf/index.js';
import { FUNC_OFFSETS } from '../payload/funcs.js';
import { FUNC_SIZE, PAYLOAD_VERSION, SEC } from '../payload/sections.js';
import { fail } from '../errors.js';
import type { Plan } from './include.js';
import { sectionKind } from './object.js';
import { trimStrings, type TrimmedStrings } from './strings.js';

/** Section flags that make no sense once sections are picked out of a group or ordered by another. */
const DROPPED_FLAGS = 0x200n /* SHF_GROUP */ | 0x80n /* SHF_LINK_ORDER */;
const SHF_INFO_LINK = 0x40n;
const NAMES_SECTION = '.rodata.hotstack.names';

interface OutSection {
  name: string;
  type: number;
  flags: bigint;
  align: number;
  entsize: number;
  data: Uint8Array;
  /** NOBITS: the size. */
  size: number;
  link?: number;
  info?: number;
}

interface OutSym {
  name: string;
  bind: number;
  type: number;
  shndx: number;
  value: bigint;
  size: bigint;
}

interface OutRela {
  offset: bigint;
  type: number;
  sym: number;
  addend: bigint;
}

class StringTable {
  private readonly parts: Buffer[] = [Buffer.from([0])];
  private length = 1;
  private readonly seen = new Map<string, number>();
  add(s: string): number {
    if (s === '') return 0;
    const known = this.seen.get(s);
    if (known !== undefined) return known;
    const off = this.length;
    const b = Buffer.from(s + '\0', 'utf8');
    this.parts.push(b);
    this.length += b.length;
    this.seen.set(s, off);
    return off;
  }
  bytes(): Uint8Array {
    return new Uint8Array(Buffer.concat(this.parts));
  }
}

/** The object for one plan (null when it has nothing to carry). */
export function emitPlan(plan: Plan): Uint8Array {
  const elf = plan.patched.elf;
  const sections: OutSection[] = [];
  const outIndex = new Map<number, number>(); // PATCHED section -> output section
  const moved = new Map<number, TrimmedStrings>(); // string sections cut down to the literals used
  for (const idx of plan.sections) {
    const s = elf.sections[idx]!;
    const nobits = s.type === SHT_NOBITS;
    let data: Uint8Array = nobits ? new Uint8Array(0) : Uint8Array.from(elf.data(s));
    if (sectionKind(s) === 'strings' && !nobits) {
      const refs = [...plan.relocs.values()].flat().flatMap((r) => (r.target.kind === 'section' && r.target.section === idx ? [r.target.addend] : []));
      const t = trimStrings(data, Number(s.addralign), refs);
      moved.set(idx, t);
      data = t.data;
    }
    outIndex.set(idx, sections.length + 1);
    sections.push({
      name: s.name, type: nobits ? SHT_NOBITS : SHT_PROGBITS, flags: s.flags & ~DROPPED_FLAGS, align: Math.max(1, Number(s.addralign)),
      entsize: Number(s.entsize), data, size: nobits ? Number(s.size) : data.length,
    });
  }
  const addendIn = (section: number, addend: bigint): bigint => {
    const t = moved.get(section);
    if (!t) return addend;
    const a = t.map(addend);
    if (a === undefined) fail('EINVAL', `${plan.patched.path}: a reference into ${elf.sections[section]!.name} at ${addend} falls outside the strings kept (internal error: please report it)`);
    return a;
  };
  // Record names, then the records.
  const names = plan.records.map((r) => r.name);
  const nameOffsets: number[] = [];
  let nameBytes = Buffer.alloc(0);
  for (const n of names) {
    nameOffsets.push(nameBytes.length);
    nameBytes = Buffer.concat([nameBytes, Buffer.from(n + '\0', 'utf8')]);
  }
  const namesIdx = plan.records.length ? sections.length + 1 : 0;
  if (namesIdx) sections.push({ name: NAMES_SECTION, type: SHT_PROGBITS, flags: SHF_ALLOC, align: 1, entsize: 0, data: new Uint8Array(nameBytes), size: nameBytes.length });
  const funcsIdx = plan.records.length ? sections.length + 1 : 0;
  if (funcsIdx) {
    const recs = new Uint8Array(plan.records.length * FUNC_SIZE);
    plan.records.forEach((_, i) => (recs[i * FUNC_SIZE + FUNC_OFFSETS.version] = PAYLOAD_VERSION));
    sections.push({ name: SEC.funcs, type: SHT_PROGBITS, flags: SHF_ALLOC | SHF_WRITE, align: 8, entsize: 0, data: recs, size: recs.length });
  }

  // Symbols: null, one section symbol per section, locals, then globals.
  const locals: OutSym[] = [{ name: '', bind: 0, type: 0, shndx: 0, value: 0n, size: 0n }];
  sections.forEach((_, i) => locals.push({ name: '', bind: STB_LOCAL, type: STT_SECTION, shndx: i + 1, value: 0n, size: 0n }));
  const globals: OutSym[] = [];
  for (const { sym: d, global } of plan.symbols) {
    const sym = { name: d.name, bind: global ? STB_GLOBAL : STB_LOCAL, type: d.sym.type, shndx: outIndex.get(d.section.index)!, value: d.sym.value, size: d.sym.size };
    (global ? globals : locals).push(sym);
  }
  const undefinedAt = new Map<string, number>();
  const undefinedSyms: string[] = [];
  for (const list of plan.relocs.values()) {
    for (const r of list) {
      if (r.target.kind === 'external' && !undefinedAt.has(r.target.name) && !globals.some((g) => g.name === (r.target as { name: string }).name)) {
        undefinedAt.set(r.target.name, -1);
        undefinedSyms.push(r.target.name);
      }
    }
  }
  for (const n of undefinedSyms) globals.push({ name: n, bind: STB_GLOBAL, type: STT_NOTYPE, shndx: 0, value: 0n, size: 0n });
  const symbols = [...locals, ...globals];
  const symIndex = (name: string): number => symbols.findIndex((s, i) => i >= locals.length && s.name === name);
  const sectionSym = (out: number): number => out; // section symbol i sits at index i

  // Relocation sections.
  const relaSections: { target: number; relas: OutRela[] }[] = [];
  for (const [idx, list] of plan.relocs) {
    const out = outIndex.get(idx);
    if (out === undefined || !list.length) continue;
    relaSections.push({
      target: out,
      relas: list.map((r) => r.target.kind === 'section'
        ? { offset: r.rela.offset, type: r.rela.type, sym: sectionSym(outIndex.get(r.target.section)!), addend: addendIn(r.target.section, r.target.addend) }
        : { offset: r.rela.offset, type: r.rela.type, sym: symIndex(r.target.name), addend: r.target.addend }),
    });
  }
  if (funcsIdx) {
    const relas: OutRela[] = [];
    plan.records.forEach((rec, i) => {
      relas.push({ offset: BigInt(i * FUNC_SIZE + FUNC_OFFSETS.name), type: R_X86_64['64'], sym: sectionSym(namesIdx), addend: BigInt(nameOffsets[i]!) });
      relas.push({ offset: BigInt(i * FUNC_SIZE + FUNC_OFFSETS.newAddr), type: R_X86_64['64'], sym: sectionSym(outIndex.get(rec.func.section.index)!), addend: rec.func.sym.value });
    });
    relaSections.push({ target: funcsIdx, relas });
  }
  const symtabIdx = sections.length + relaSections.length + 1;
  for (const rs of relaSections) {
    const data = new Uint8Array(rs.relas.length * RELA_SIZE);
    const dv = new DataView(data.buffer);
    rs.relas.forEach((r, i) => {
      dv.setBigUint64(i * RELA_SIZE, r.offset, true);
      dv.setBigUint64(i * RELA_SIZE + 8, (BigInt(r.sym) << 32n) | BigInt(r.type), true);
      dv.setBigInt64(i * RELA_SIZE + 16, r.addend, true);
    });
    sections.push({ name: `.rela${sections[rs.target - 1]!.name}`, type: SHT_RELA, flags: SHF_INFO_LINK, align: 8, entsize: RELA_SIZE, data, size: data.length, link: symtabIdx, info: rs.target });
  }
  const strtab = new StringTable();
  const symData = new Uint8Array(symbols.length * SYM_SIZE);
  const sdv = new DataView(symData.buffer);
  symbols.forEach((s, i) => {
    const o = i * SYM_SIZE;
    sdv.setUint32(o, strtab.add(s.name), true);
    symData[o + 4] = (s.bind << 4) | s.type;
    sdv.setUint16(o + 6, s.shndx, true);
    sdv.setBigUint64(o + 8, s.value, true);
    sdv.setBigUint64(o + 16, s.size, true);
  });
  sections.push({ name: '.symtab', type: SHT_SYMTAB, flags: 0n, align: 8, entsize: SYM_SIZE, data: symData, size: symData.length, link: symtabIdx + 1, info: locals.length });
  const strData = strtab.bytes();
  sections.push({ name: '.strtab', type: SHT_STRTAB, flags: 0n, align: 1, entsize: 0, data: strData, size: strData.length });
  return writeObject(sections);
}

/** Lay out an ET_REL file: header, section contents, section-name table, section headers. */
function writeObject(sections: OutSection[]): Uint8Array {
  const shstr = new StringTable();
  const nameOffs = sections.map((s) => shstr.add(s.name));
  const shstrName = shstr.add('.shstrtab');
  const shstrData = shstr.bytes();
  const all = [...sections, { name: '.shstrtab', type: SHT_STRTAB, flags: 0n, align: 1, entsize: 0, data: shstrData, size: shstrData.length }];
  const offsets: number[] = [];
  let pos = EHDR_SIZE;
  for (const s of all) {
    pos = alignUp(pos, s.align);
    offsets.push(pos);
    if (s.type !== SHT_NOBITS) pos += s.data.length;
  }
  const shoff = alignUp(pos, 8);
  const shnum = all.length + 1;
  const out = new Uint8Array(shoff + shnum * SHDR_SIZE);
  const dv = new DataView(out.buffer);
  writeRelHeader(out, shoff, shnum, shnum - 1);
  all.forEach((s, i) => {
    if (s.type !== SHT_NOBITS) out.set(s.data, offsets[i]!);
    const o = shoff + (i + 1) * SHDR_SIZE;
    dv.setUint32(o, i < sections.length ? nameOffs[i]! : shstrName, true);
    dv.setUint32(o + 4, s.type, true);
    dv.setBigUint64(o + 8, s.flags, true);
    dv.setBigUint64(o + 24, BigInt(offsets[i]!), true);
    dv.setBigUint64(o + 32, BigInt(s.size), true);
    dv.setUint32(o + 40, (s as OutSection).link ?? 0, true);
    dv.setUint32(o + 44, (s as OutSection).info ?? 0, true);
    dv.setBigUint64(o + 48, BigInt(s.align), true);
    dv.setBigUint64(o + 56, BigInt(s.entsize), true);
  });
  return out;
}
