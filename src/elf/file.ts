/**
 * ELF64 little-endian reader: header, section headers, program headers and
 * their names. Symbols, relocations and notes have their own modules. The
 * reader checks structure (every table inside the file); policy (what a
 * payload may contain) lives in src/payload.
 */
import { fail } from '../errors.js';
import { ByteView, cString } from './bytes.js';
import {
  EHDR_SIZE, ELFCLASS64, ELFDATA2LSB, PHDR_SIZE, PT_LOAD, SHDR_SIZE, SHN_UNDEF, SHT_NOBITS,
  SHT_STRTAB,
} from './constants.js';

export interface ElfHeader {
  class: number;
  data: number;
  identVersion: number;
  osabi: number;
  abiversion: number;
  type: number;
  machine: number;
  version: number;
  entry: bigint;
  phoff: bigint;
  shoff: bigint;
  flags: number;
  ehsize: number;
  phentsize: number;
  phnum: number;
  shentsize: number;
  shnum: number;
  shstrndx: number;
}

export interface Section {
  index: number;
  /** Offset of the name in the section-name string table. */
  nameOff: number;
  /** Resolved name ('' when the name table is unusable). */
  name: string;
  type: number;
  flags: bigint;
  addr: bigint;
  offset: bigint;
  size: bigint;
  link: number;
  info: number;
  addralign: bigint;
  entsize: bigint;
  /** File offset of this section's header, for error messages. */
  headerOffset: number;
}

export interface Segment {
  type: number;
  flags: number;
  offset: bigint;
  vaddr: bigint;
  filesz: bigint;
  memsz: bigint;
  align: bigint;
}

const MAGIC = [0x7f, 0x45, 0x4c, 0x46];

/** Largest NOBITS section data() makes zeros for (64 MiB: the bound on a payload's memory). */
export const MAX_NOBITS_DATA = 64 * 1024 * 1024;

/** Read just the ELF header (size and magic checked: EINVAL; class/data: EOPNOTSUPP). */
export function readHeader(view: ByteView): ElfHeader {
  if (view.length < EHDR_SIZE) {
    fail('EINVAL', `file is ${view.length} bytes, shorter than an ELF header (${EHDR_SIZE})`, 0);
  }
  for (let i = 0; i < 4; i++) {
    if (view.u8(i) !== MAGIC[i]) fail('EINVAL', 'not an ELF file (bad magic)', 0);
  }
  const h: ElfHeader = {
    class: view.u8(4),
    data: view.u8(5),
    identVersion: view.u8(6),
    osabi: view.u8(7),
    abiversion: view.u8(8),
    type: view.u16(16),
    machine: view.u16(18),
    version: view.u32(20),
    entry: view.u64(24),
    phoff: view.u64(32),
    shoff: view.u64(40),
    flags: view.u32(48),
    ehsize: view.u16(52),
    phentsize: view.u16(54),
    phnum: view.u16(56),
    shentsize: view.u16(58),
    shnum: view.u16(60),
    shstrndx: view.u16(62),
  };
  if (h.class !== ELFCLASS64) fail('EOPNOTSUPP', `ELF class ${h.class} is not ELFCLASS64`, 4);
  if (h.data !== ELFDATA2LSB) fail('EOPNOTSUPP', `ELF data encoding ${h.data} is not little-endian`, 5);
  return h;
}

export class ElfFile {
  readonly view: ByteView;
  readonly header: ElfHeader;
  readonly sections: Section[];
  readonly segments: Segment[];
  /** Whether section names could be resolved (valid e_shstrndx and string table). */
  readonly namesOk: boolean;
  private byName: Map<string, Section[]> | undefined;

  private constructor(view: ByteView, header: ElfHeader, sections: Section[], segments: Segment[], namesOk: boolean) {
    this.view = view;
    this.header = header;
    this.sections = sections;
    this.segments = segments;
    this.namesOk = namesOk;
  }

  get bytes(): Uint8Array {
    return this.view.bytes;
  }

  /**
   * Parse an ELF64 LE file. Tables that lie outside the file are EINVAL
   * with their offset. Section names are resolved when the name table is
   * sound; payload validation insists on that separately.
   */
  static parse(bytes: Uint8Array, what = 'file'): ElfFile {
    const view = new ByteView(bytes, what);
    const h = readHeader(view);
    const sections = readSections(view, h);
    const segments = readSegments(view, h);
    const namesOk = resolveNames(view, h, sections);
    return new ElfFile(view, h, sections, segments, namesOk);
  }

  /** First section with this name. */
  section(name: string): Section | undefined {
    return this.sectionsNamed(name)[0];
  }

  /** All sections with this name (payload rules refuse duplicates). */
  sectionsNamed(name: string): Section[] {
    if (!this.byName) {
      this.byName = new Map();
      for (const s of this.sections) {
        if (s.index === 0) continue;
        const l = this.byName.get(s.name);
        if (l) l.push(s);
        else this.byName.set(s.name, [s]);
      }
    }
    return this.byName.get(name) ?? [];
  }

  /**
   * Contents of a section (NOBITS: zeros). Bounds-checked; a NOBITS
   * section's zeros are only made up to MAX_NOBITS_DATA (ENOMEM beyond), so
   * a header declaring a terabyte cannot make the reader allocate it.
   */
  data(sec: Section): Uint8Array {
    if (sec.type === SHT_NOBITS) {
      if (sec.size > BigInt(MAX_NOBITS_DATA)) {
        fail('ENOMEM', `section [${sec.index}] ${sec.name} is a NOBITS section of ${sec.size} bytes; reading it would take more than ${MAX_NOBITS_DATA} bytes (section header at file offset 0x${sec.headerOffset.toString(16)})`, sec.headerOffset);
      }
      return new Uint8Array(Number(sec.size));
    }
    return this.view.slice(sec.offset, sec.size, `section [${sec.index}] ${sec.name || ''} data`.trimEnd());
  }

  /** Whether the section's data lies within the file (NOBITS always does). */
  inFile(sec: Section): boolean {
    if (sec.type === SHT_NOBITS) return true;
    return sec.offset + sec.size <= BigInt(this.view.length) && sec.size <= BigInt(this.view.length);
  }

  /** Loadable segments. */
  loads(): Segment[] {
    return this.segments.filter((s) => s.type === PT_LOAD);
  }

  /**
   * Bytes at link-time virtual address `addr` as the loader would map them
   * (from PT_LOAD segments; the part past filesz reads as zeros). Throws
   * EFAULT when the range is not mapped by one segment.
   */
  readVirtual(addr: bigint, len: number): Uint8Array {
    for (const s of this.loads()) {
      if (addr >= s.vaddr && addr + BigInt(len) <= s.vaddr + s.memsz) {
        const out = new Uint8Array(len);
        const rel = addr - s.vaddr;
        if (rel < s.filesz) {
          const n = Number(s.filesz - rel < BigInt(len) ? s.filesz - rel : BigInt(len));
          out.set(this.view.slice(s.offset + rel, n, `segment data at 0x${addr.toString(16)}`), 0);
        }
        return out;
      }
    }
    return fail('EFAULT', `address 0x${addr.toString(16)} (+${len}) is not inside a loaded segment`);
  }

  /** Whether [addr, addr+len) is inside one PT_LOAD segment. */
  isMapped(addr: bigint, len: number): boolean {
    return this.loads().some((s) => addr >= s.vaddr && addr + BigInt(len) <= s.vaddr + s.memsz);
  }
}

function readSections(view: ByteView, h: ElfHeader): Section[] {
  if (h.shnum === 0) return [];
  if (h.shentsize < SHDR_SIZE) {
    fail('EINVAL', `section header size e_shentsize=${h.shentsize} is smaller than ${SHDR_SIZE}`, 58);
  }
  if (h.shoff >= BigInt(view.length)) {
    fail('EINVAL', `section header table offset e_shoff=0x${h.shoff.toString(16)} is past the end of the file`, 40);
  }
  const tableEnd = h.shoff + BigInt(h.shnum) * BigInt(h.shentsize);
  if (tableEnd > BigInt(view.length)) {
    fail('EINVAL', `section header table (${h.shnum} entries at 0x${h.shoff.toString(16)}) runs past the end of the file`, Number(h.shoff));
  }
  const out: Section[] = [];
  for (let i = 0; i < h.shnum; i++) {
    const o = Number(h.shoff) + i * h.shentsize;
    out.push({
      index: i,
      nameOff: view.u32(o),
      name: '',
      type: view.u32(o + 4),
      flags: view.u64(o + 8),
      addr: view.u64(o + 16),
      offset: view.u64(o + 24),
      size: view.u64(o + 32),
      link: view.u32(o + 40),
      info: view.u32(o + 44),
      addralign: view.u64(o + 48),
      entsize: view.u64(o + 56),
      headerOffset: o,
    });
  }
  return out;
}

function readSegments(view: ByteView, h: ElfHeader): Segment[] {
  if (h.phnum === 0) return [];
  if (h.phentsize < PHDR_SIZE) fail('EINVAL', `program header size e_phentsize=${h.phentsize} is smaller than ${PHDR_SIZE}`, 54);
  const end = h.phoff + BigInt(h.phnum) * BigInt(h.phentsize);
  if (end > BigInt(view.length)) fail('EINVAL', 'program header table runs past the end of the file', Number(h.phoff));
  const out: Segment[] = [];
  for (let i = 0; i < h.phnum; i++) {
    const o = Number(h.phoff) + i * h.phentsize;
    out.push({
      type: view.u32(o),
      flags: view.u32(o + 4),
      offset: view.u64(o + 8),
      vaddr: view.u64(o + 16),
      filesz: view.u64(o + 32),
      memsz: view.u64(o + 40),
      align: view.u64(o + 48),
    });
  }
  return out;
}

function resolveNames(view: ByteView, h: ElfHeader, sections: Section[]): boolean {
  if (h.shstrndx === SHN_UNDEF || h.shstrndx >= sections.length) return false;
  const st = sections[h.shstrndx]!;
  if (st.type !== SHT_STRTAB || st.size === 0n) return false;
  if (st.offset + st.size > BigInt(view.length)) return false;
  const table = view.slice(st.offset, st.size);
  if (table[0] !== 0 || table[table.length - 1] !== 0) return false;
  for (const s of sections) {
    if (s.index === 0) continue;
    if (s.nameOff >= table.length) return false;
  }
  for (const s of sections) {
    if (s.index === 0) continue;
    s.name = cString(table, s.nameOff, `section [${s.index}] name`);
  }
  return true;
}
