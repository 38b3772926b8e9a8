/**
 * Just enough DWARF (versions 2-5, as gcc and clang emit with -g) to say
 * where a function was inlined: every DW_TAG_inlined_subroutine, the
 * function it stands for (DW_AT_abstract_origin, through
 * DW_AT_specification / further abstract origins to a name), and the
 * DW_TAG_subprogram around it. Units, abbreviations or forms that do not
 * parse are skipped (the unit lengths let the reader go on with the
 * next unit); nothing here throws.
 */
import { inflateSync } from 'node:zlib';
import type { ElfFile } from '../elf/index.js';
import { ELFCOMPRESS_ZLIB, SHF_COMPRESSED, SHT_NOBITS } from '../elf/index.js';

const TAG_SUBPROGRAM = 0x2e;
const TAG_INLINED = 0x1d;
const TAG_CU = 0x11;
const TAG_PARTIAL = 0x3c;
const TAG_SKELETON = 0x4a;
const AT_NAME = 0x03, AT_LOW_PC = 0x11, AT_HIGH_PC = 0x12, AT_PRODUCER = 0x25, AT_ORIGIN = 0x31, AT_SPEC = 0x47, AT_LINKAGE = 0x6e, AT_MIPS_LINKAGE = 0x2007;
const AT_STR_OFFSETS_BASE = 0x72, AT_ADDR_BASE = 0x73;

/** Section contents, decompressed when SHF_COMPRESSED (zlib). */
function sectionData(elf: ElfFile, name: string, problems: string[]): Uint8Array | undefined {
  const s = elf.section(name);
  if (!s || s.type === SHT_NOBITS || !elf.inFile(s)) return undefined;
  const raw = elf.data(s);
  if (!(s.flags & SHF_COMPRESSED)) return raw;
  if (raw.length < 24) return undefined;
  const type = new DataView(raw.buffer, raw.byteOffset, 24).getUint32(0, true);
  if (type !== ELFCOMPRESS_ZLIB) {
    problems.push(`${name} is compressed with a method other than zlib (type ${type}); inlining not read`);
    return undefined;
  }
  try {
    return new Uint8Array(inflateSync(raw.subarray(24)));
  } catch {
    problems.push(`${name} does not decompress`);
    return undefined;
  }
}

class R {
  o: number;
  constructor(readonly d: Uint8Array, o = 0) {
    this.o = o;
  }
  need(n: number): void {
    if (this.o + n > this.d.length || n < 0) throw new RangeError('dwarf: past the end');
  }
  u8(): number {
    this.need(1);
    return this.d[this.o++]!;
  }
  u16(): number {
    this.need(2);
    const v = this.d[this.o]! | (this.d[this.o + 1]! << 8);
    this.o += 2;
    return v;
  }
  u24(): number {
    return this.u16() + this.u8() * 0x10000;
  }
  u32(): number {
    this.need(4);
    const v = (this.d[this.o]! | (this.d[this.o + 1]! << 8) | (this.d[this.o + 2]! << 16)) + this.d[this.o + 3]! * 0x1000000;
    this.o += 4;
    return v;
  }
  u64(): number {
    const lo = this.u32();
    const hi = this.u32();
    return hi * 0x100000000 + lo; // offsets and addresses below 2^53
  }
  uleb(): number {
    let v = 0, mul = 1;
    for (;;) {
      const b = this.u8();
      v += (b & 0x7f) * mul;
      mul *= 128;
      if (!(b & 0x80)) return v;
      if (mul > 2 ** 63) throw new RangeError('dwarf: leb too long');
    }
  }
  sleb(): number {
    let v = 0, mul = 1, b: number;
    do {
      b = this.u8();
      v += (b & 0x7f) * mul;
      mul *= 128;
      if (mul > 2 ** 63) throw new RangeError('dwarf: leb too long');
    } while (b & 0x80);
    return b & 0x40 ? v - mul : v;
  }
  skip(n: number): void {
    this.need(n);
    this.o += n;
  }
  cstr(): string {
    const start = this.o;
    while (this.o < this.d.length && this.d[this.o] !== 0) this.o++;
    if (this.o >= this.d.length) throw new RangeError('dwarf: unterminated string');
    const s = Buffer.from(this.d.buffer, this.d.byteOffset + start, this.o - start).toString('utf8');
    this.o++;
    return s;
  }
}

interface Abbrev {
  tag: number;
  children: boolean;
  attrs: [number, number, number][];
}

/** A string attribute not resolved yet (strx needs the unit's str_offsets_base, which may come later). */
type StrRef = { s: string } | { strp: number } | { line: number } | { strx: number } | null;
type AddrRef = { addr: number } | { addrx: number } | null;

interface Unit {
  offset: number;
  offsetSize: number;
  addrSize: number;
  strOffBase: number;
  addrBase: number;
  name: StrRef;
  producer: StrRef;
}

interface Sub {
  unit: Unit;
  name: StrRef;
  linkage: StrRef;
  origin: number;
  spec: number;
  lowPc: AddrRef;
  /** DW_AT_high_pc: an address, or (DWARF 4+) a length from low_pc. */
  highPc: { addr: AddrRef } | { len: number } | null;
}

/** Where functions were inlined, by function name; which compiler and flags built which code. */
export class DwarfInlines {
  readonly problems: string[] = [];
  /** False when the object has no .debug_info. */
  readonly present: boolean;
  private readonly subs = new Map<number, Sub>();
  private readonly inlined: { origin: number; within: number }[] = [];
  private readonly units: Unit[] = [];
  private ranges: { lo: number; hi: number; unit: Unit }[] | undefined;
  private readonly str: Uint8Array | undefined;
  private readonly lineStr: Uint8Array | undefined;
  private readonly strOffsets: Uint8Array | undefined;
  private readonly addr: Uint8Array | undefined;
  private index: Map<string, { file: string | null; within: number }[]> | undefined;

  constructor(elf: ElfFile) {
    const info = sectionData(elf, '.debug_info', this.problems);
    const abbrev = sectionData(elf, '.debug_abbrev', this.problems);
    this.str = sectionData(elf, '.debug_str', this.problems);
    this.lineStr = sectionData(elf, '.debug_line_str', this.problems);
    this.strOffsets = sectionData(elf, '.debug_str_offsets', this.problems);
    this.addr = sectionData(elf, '.debug_addr', this.problems);
    this.present = !!info && !!abbrev;
    if (info && abbrev) this.parse(info, abbrev);
  }

  private parse(info: Uint8Array, abbrevData: Uint8Array): void {
    const abbrevCache = new Map<number, Map<number, Abbrev> | null>();
    let o = 0;
    let bad = 0;
    while (o + 4 <= info.length) {
      const r = new R(info, o);
      let len = r.u32();
      let offsetSize = 4;
      if (len === 0xffffffff) {
        len = r.u64();
        offsetSize = 8;
      }
      const end = r.o + len;
      if (len === 0 || end > info.length) break;
      try {
        this.parseUnit(r, o, end, offsetSize, abbrevData, abbrevCache);
      } catch {
        bad++;
      }
      o = end;
    }
    if (bad) this.problems.push(`${bad} DWARF unit(s) could not be read`);
  }

  private parseUnit(r: R, unitOff: number, end: number, offsetSize: number, abbrevData: Uint8Array, cache: Map<number, Map<number, Abbrev> | null>): void {
    const version = r.u16();
    if (version < 2 || version > 5) return;
    let abbrevOff: number, addrSize: number;
    if (version >= 5) {
      const unitType = r.u8();
      addrSize = r.u8();
      abbrevOff = offsetSize === 8 ? r.u64() : r.u32();
      if (unitType === 4 || unitType === 5) r.skip(8); // skeleton / split: dwo id
      else if (unitType === 2 || unitType === 6) r.skip(8 + offsetSize); // type units: signature, type offset
    } else {
      abbrevOff = offsetSize === 8 ? r.u64() : r.u32();
      addrSize = r.u8();
    }
    let abbrevs = cache.get(abbrevOff);
    if (abbrevs === undefined) {
      abbrevs = readAbbrevs(abbrevData, abbrevOff);
      cache.set(abbrevOff, abbrevs);
    }
    if (!abbrevs) return;
    const unit: Unit = { offset: unitOff, offsetSize, addrSize, strOffBase: 8, addrBase: 8, name: null, producer: null };
    this.units.push(unit);
    /** Enclosing DIEs with children: tag and offset. */
    const stack: { tag: number; off: number }[] = [];
    while (r.o < end) {
      const off = r.o;
      const code = r.uleb();
      if (code === 0) {
        stack.pop();
        continue;
      }
      const ab = abbrevs.get(code);
      if (!ab) throw new RangeError('dwarf: unknown abbreviation');
      const want = ab.tag === TAG_SUBPROGRAM || ab.tag === TAG_INLINED || ab.tag === TAG_CU || ab.tag === TAG_PARTIAL || ab.tag === TAG_SKELETON;
      let name: StrRef = null, linkage: StrRef = null, lowPc: AddrRef = null, producer: StrRef = null;
      let highPc: Sub['highPc'] = null;
      let origin = -1, spec = -1;
      for (const [at, form0, implicit] of ab.attrs) {
        let form = form0;
        while (form === 0x16) form = r.uleb(); // DW_FORM_indirect
        if (!want) {
          skipForm(r, form, unit, version);
          continue;
        }
        switch (at) {
          case AT_NAME: name = readStr(r, form, unit, version); break;
          case AT_LINKAGE:
          case AT_MIPS_LINKAGE: linkage = readStr(r, form, unit, version); break;
          case AT_ORIGIN: origin = readRef(r, form, unit, version); break;
          case AT_SPEC: spec = readRef(r, form, unit, version); break;
          case AT_LOW_PC: lowPc = readAddr(r, form, unit); break;
          case AT_HIGH_PC: highPc = form === 0x01 || form === 0x1b || (form >= 0x29 && form <= 0x2c) || form === 0x1f01
            ? { addr: readAddr(r, form, unit) } : { len: readConst(r, form, unit, version) };
            break;
          case AT_PRODUCER: producer = readStr(r, form, unit, version); break;
          case AT_STR_OFFSETS_BASE: unit.strOffBase = readOffset(r, form, unit, implicit); break;
          case AT_ADDR_BASE: unit.addrBase = readOffset(r, form, unit, implicit); break;
          default: skipForm(r, form, unit, version);
        }
      }
      if (ab.tag === TAG_CU || ab.tag === TAG_PARTIAL || ab.tag === TAG_SKELETON) {
        unit.name = name;
        unit.producer = producer;
      } else if (ab.tag === TAG_SUBPROGRAM) this.subs.set(off, { unit, name, linkage, origin, spec, lowPc, highPc });
      else if (ab.tag === TAG_INLINED && origin >= 0) {
        let within = -1;
        for (let k = stack.length - 1; k >= 0; k--) {
          if (stack[k]!.tag === TAG_SUBPROGRAM) {
            within = stack[k]!.off;
            break;
          }
        }
        if (within >= 0) this.inlined.push({ origin, within });
      }
      if (ab.children) stack.push({ tag: ab.tag, off });
    }
  }

  private str_(ref: StrRef, unit: Unit): string | null {
    if (!ref) return null;
    try {
      if ('s' in ref) return ref.s;
      if ('strp' in ref) return this.str ? new R(this.str, ref.strp).cstr() : null;
      if ('line' in ref) return this.lineStr ? new R(this.lineStr, ref.line).cstr() : null;
      if (!this.strOffsets || !this.str) return null;
      const rr = new R(this.strOffsets, unit.strOffBase + ref.strx * unit.offsetSize);
      const off = unit.offsetSize === 8 ? rr.u64() : rr.u32();
      return new R(this.str, off).cstr();
    } catch {
      return null;
    }
  }

  private addr_(ref: AddrRef, unit: Unit): number | null {
    if (!ref) return null;
    if ('addr' in ref) return ref.addr;
    if (!this.addr) return null;
    try {
      const rr = new R(this.addr, unit.addrBase + ref.addrx * unit.addrSize);
      return unit.addrSize === 8 ? rr.u64() : rr.u32();
    } catch {
      return null;
    }
  }

  /** The name a subprogram DIE stands for, through abstract origins and specifications. */
  private nameOf(off: number): { name: string; unit: Unit } | null {
    for (let hop = 0; hop < 8 && off >= 0; hop++) {
      const s = this.subs.get(off);
      if (!s) return null;
      const n = this.str_(s.name, s.unit);
      if (n) return { name: n, unit: s.unit };
      off = s.origin >= 0 ? s.origin : s.spec;
    }
    return null;
  }

  /**
   * DW_AT_producer of the compile unit whose code holds `pc` (through the
   * extents of its functions); undefined when DWARF does not say.
   */
  producerAt(pc: number): string | undefined {
    if (!this.ranges) {
      this.ranges = [];
      for (const s of this.subs.values()) {
        const lo = this.addr_(s.lowPc, s.unit);
        if (lo === null || !s.highPc) continue;
        const hi = 'len' in s.highPc ? lo + s.highPc.len : this.addr_(s.highPc.addr, s.unit);
        if (hi !== null && hi > lo) this.ranges.push({ lo, hi, unit: s.unit });
      }
      this.ranges.sort((a, b) => a.lo - b.lo);
    }
    let lo = 0, hi = this.ranges.length - 1, idx = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (this.ranges[mid]!.lo <= pc) { idx = mid; lo = mid + 1; } else hi = mid - 1;
    }
    for (let i = idx; i >= 0 && i > idx - 8; i--) {
      const r = this.ranges[i]!;
      if (pc >= r.lo && pc < r.hi) return this.str_(r.unit.producer, r.unit) ?? undefined;
    }
    return undefined;
  }

  /**
   * Names of the functions `name` was inlined into (by their symbol at
   * DW_AT_low_pc when `symbolAt` knows one, so clones show as such). With
   * `file`, only inlines of the function from that compile unit.
   */
  inlinedInto(name: string, file: string | undefined, symbolAt: (addr: number) => string | undefined): string[] {
    if (!this.index) {
      this.index = new Map();
      for (const x of this.inlined) {
        const o = this.nameOf(x.origin);
        if (!o) continue;
        const cu = this.str_(o.unit.name, o.unit);
        const l = this.index.get(o.name) ?? [];
        l.push({ file: cu, within: x.within });
        this.index.set(o.name, l);
      }
    }
    const out = new Set<string>();
    for (const e of this.index.get(name) ?? []) {
      if (file !== undefined && e.file !== null && basename(e.file) !== basename(file)) continue;
      const s = this.subs.get(e.within);
      let label: string | undefined;
      if (s) {
        const pc = this.addr_(s.lowPc, s.unit);
        if (pc !== null) label = symbolAt(pc);
        label ??= this.str_(s.linkage, s.unit) ?? this.nameOf(e.within)?.name;
      }
      if (label) out.add(label);
    }
    return [...out].sort();
  }
}

/**
 * Whether a compile unit's producer string says its code may rely on the
 * registers a callee actually clobbers (interprocedural register
 * allocation): gcc's -fipa-ra, on at -O2/-O3/-Os unless -fno-ipa-ra or
 * -flive-patching; clang only with `-mllvm -enable-ipra`. Unknown
 * producers (or gcc without recorded switches) count as yes.
 */
export function producerMayRelyOnClobbers(producer: string): boolean {
  if (/clang/i.test(producer)) return /enable-ipra/.test(producer);
  if (!/^GNU /.test(producer)) return true;
  const flags = producer.split(/\s+/).filter((t) => t.startsWith('-'));
  if (!flags.length) return true; // -gno-record-gcc-switches: cannot tell
  let on = false;
  let explicit: boolean | undefined;
  let livePatching = false;
  for (const f of flags) {
    if (/^-O(2|3|s|z|fast)$/.test(f)) on = true;
    else if (/^-O(0|1|g)?$/.test(f)) on = false;
    else if (f === '-fipa-ra') explicit = true;
    else if (f === '-fno-ipa-ra') explicit = false;
    else if (f.startsWith('-flive-patching')) livePatching = true;
  }
  on = explicit ?? on;
  if (livePatching) on = false;
  return on;
}

function basename(p: string): string {
  const i = p.lastIndexOf('/');
  return i >= 0 ? p.slice(i + 1) : p;
}

function readAbbrevs(d: Uint8Array, off: number): Map<number, Abbrev> | null {
  const out = new Map<number, Abbrev>();
  try {
    const r = new R(d, off);
    for (;;) {
      const code = r.uleb();
      if (code === 0) break;
      const tag = r.uleb();
      const children = r.u8() !== 0;
      const attrs: [number, number, number][] = [];
      for (;;) {
        const at = r.uleb();
        const form = r.uleb();
        const implicit = form === 0x21 ? r.sleb() : 0;
        if (at === 0 && form === 0) break;
        attrs.push([at, form, implicit]);
      }
      out.set(code, { tag, children, attrs });
    }
  } catch {
    return out.size ? out : null;
  }
  return out;
}

function readConst(r: R, form: number, unit: Unit, version: number): number {
  switch (form) {
    case 0x0b: return r.u8();
    case 0x05: return r.u16();
    case 0x06: return r.u32();
    case 0x07: return r.u64();
    case 0x0f: return r.uleb();
    case 0x0d: return r.sleb();
    default: skipForm(r, form, unit, version); return 0;
  }
}

function readOffset(r: R, form: number, unit: Unit, implicit: number): number {
  switch (form) {
    case 0x17: case 0x06: return unit.offsetSize === 8 && form === 0x17 ? r.u64() : r.u32();
    case 0x07: return r.u64();
    case 0x21: return implicit;
    default: skipForm(r, form, unit, 5); return 8;
  }
}

function readStr(r: R, form: number, unit: Unit, version: number): StrRef {
  switch (form) {
    case 0x08: return { s: r.cstr() };
    case 0x0e: return { strp: unit.offsetSize === 8 ? r.u64() : r.u32() };
    case 0x1f: return { line: unit.offsetSize === 8 ? r.u64() : r.u32() };
    case 0x1a: case 0x1f02: return { strx: r.uleb() };
    case 0x25: return { strx: r.u8() };
    case 0x26: return { strx: r.u16() };
    case 0x27: return { strx: r.u24() };
    case 0x28: return { strx: r.u32() };
    default: skipForm(r, form, unit, version); return null;
  }
}

function readRef(r: R, form: number, unit: Unit, version: number): number {
  switch (form) {
    case 0x11: return unit.offset + r.u8();
    case 0x12: return unit.offset + r.u16();
    case 0x13: return unit.offset + r.u32();
    case 0x14: return unit.offset + r.u64();
    case 0x15: return unit.offset + r.uleb();
    case 0x10: return version <= 2 ? (unit.addrSize === 8 ? r.u64() : r.u32()) : unit.offsetSize === 8 ? r.u64() : r.u32();
    default: skipForm(r, form, unit, version); return -1; // signatures, supplementary files
  }
}

function readAddr(r: R, form: number, unit: Unit): AddrRef {
  switch (form) {
    case 0x01: return { addr: unit.addrSize === 8 ? r.u64() : r.u32() };
    case 0x1b: case 0x1f01: return { addrx: r.uleb() };
    case 0x29: return { addrx: r.u8() };
    case 0x2a: return { addrx: r.u16() };
    case 0x2b: return { addrx: r.u24() };
    case 0x2c: return { addrx: r.u32() };
    default: skipForm(r, form, unit, 5); return null;
  }
}

/** Step over one attribute value. Unknown forms throw (the unit is abandoned). */
function skipForm(r: R, form: number, unit: Unit, version: number): void {
  const os = unit.offsetSize;
  switch (form) {
    case 0x01: r.skip(unit.addrSize); return; // addr
    case 0x03: r.skip(r.u16()); return; // block2
    case 0x04: r.skip(r.u32()); return; // block4
    case 0x05: r.skip(2); return; // data2
    case 0x06: r.skip(4); return; // data4
    case 0x07: r.skip(8); return; // data8
    case 0x08: r.cstr(); return; // string
    case 0x09: case 0x18: r.skip(r.uleb()); return; // block, exprloc
    case 0x0a: r.skip(r.u8()); return; // block1
    case 0x0b: r.skip(1); return; // data1
    case 0x0c: r.skip(1); return; // flag
    case 0x0d: r.sleb(); return; // sdata
    case 0x0e: case 0x17: case 0x1d: case 0x1f: case 0x1f20: case 0x1f21: r.skip(os); return; // strp, sec_offset, strp_sup, line_strp, GNU alt
    case 0x0f: case 0x15: case 0x1a: case 0x1b: case 0x22: case 0x23: case 0x1f01: case 0x1f02: r.uleb(); return;
    case 0x10: r.skip(version <= 2 ? unit.addrSize : os); return; // ref_addr
    case 0x11: case 0x25: case 0x29: r.skip(1); return;
    case 0x12: case 0x26: case 0x2a: r.skip(2); return;
    case 0x27: case 0x2b: r.skip(3); return;
    case 0x13: case 0x1c: case 0x28: case 0x2c: r.skip(4); return;
    case 0x14: case 0x20: case 0x24: r.skip(8); return;
    case 0x1e: r.skip(16); return; // data16
    case 0x19: case 0x21: return; // flag_present, implicit_const
    case 0x16: skipForm(r, r.uleb(), unit, version); return;
    default: throw new RangeError(`dwarf: unknown form 0x${form.toString(16)}`);
  }
}
