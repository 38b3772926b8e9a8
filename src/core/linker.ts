/**
 * The payload linker: lays sections out in three W^X regions (text RX,
 * rodata R, data RW, as Xen's move_payload), resolves symbols in the
 * spec's order, and applies RELA relocations, building GOT slots and jump
 * veneers for code that needs them. Everything is computed in local
 * buffers; the engine writes them to the target only once every check
 * has passed, so a failed upload leaves nothing behind but freed memory.
 */
import { fail } from '../errors.js';
import {
  alignUp, SHF_ALLOC, SHF_EXECINSTR, SHF_WRITE, SHN_ABS, SHN_UNDEF, SHT_NOBITS, type ElfSymbol, type Section,
} from '../elf/index.js';
import { relaLabel, symbolOffset } from '../payload/symbols-relocations.js';
import { arch } from '../arch/index.js';
import type { Payload } from '../payload/parse.js';
import type { BaseObject, Perm, Target } from './target.js';
import type { ExternalRecord } from './state.js';

const PAGE = 4096;
const GOT_ENTRY = 8;
/** Bound on a payload's memory: its sections come from a file of at most 2 MiB plus bounded .bss. */
const MAX_PAYLOAD_MEMORY = 64 * 1024 * 1024;

export interface LinkedRegion {
  perm: Perm;
  addr: bigint;
  size: number;
  bytes: Uint8Array;
}

/** Where an undefined symbol was found, for messages and `inspect`. */
export type SymbolSource = 'base' | 'payload' | 'external' | 'local';

export interface Linked {
  regions: LinkedRegion[];
  /** Run-time address per section index (undefined: not loaded). */
  sectionAddr: (bigint | undefined)[];
  /** Local (relocated) bytes per loaded section index. */
  sectionBytes: (Uint8Array | undefined)[];
  /** Resolved value per symbol index. */
  symbolValue: bigint[];
  /** Undefined symbols resolved outside the base and the payloads, with the object that defined each. */
  externals: ExternalRecord[];
  /** Offsets written by a relocation, per section index. */
  relocated: Map<number, Set<number>>;
  text: { start: bigint; end: bigint } | null;
  /** Address of the reserved data bytes (0n when none were asked for). */
  reserved: bigint;
  /** Up to `max` bytes from `addr` to the end of its region; undefined when outside. */
  readLocalUpTo(addr: bigint, max: number): Uint8Array | undefined;
}

/** Resolves undefined symbols exported by already-loaded payloads. */
export type ExportLookup = (name: string) => bigint | undefined;

/** Sections that are not loaded: not allocated, or empty (Xen: livepatch_elf_ignore_section). */
export function isLoaded(s: Section): boolean {
  return (s.flags & SHF_ALLOC) !== 0n && s.size !== 0n;
}

/** Which region a loaded section goes to. */
export function regionOf(s: Section): Perm {
  if ((s.flags & SHF_EXECINSTR) !== 0n) return 'rx';
  if ((s.flags & SHF_WRITE) !== 0n) return 'rw';
  return 'r';
}

interface Layout {
  sizes: Record<Perm, number>;
  offset: number[];
  gotOffset: number;
  gotSlots: Map<number, number>;
  veneerOffset: number;
  veneerSlots: Map<number, number>;
  reserveOffset: number;
}

/** Bytes per jump veneer of a far call: the arch's veneer, 16-byte aligned. */
const VENEER_SLOT = Math.ceil(arch.veneerLen / 16) * 16;

function layout(c: Payload, reserveRw: number): Layout {
  const sizes: Record<Perm, number> = { rx: 0, r: 0, rw: 0 };
  const offset: number[] = [];
  for (const s of c.elf.sections) {
    if (s.index === 0 || !isLoaded(s)) continue;
    const p = regionOf(s);
    const o = alignUp(sizes[p], Number(s.addralign));
    offset[s.index] = o;
    sizes[p] = o + Number(s.size);
  }
  // GOT slots and veneers, sized from a scan of the relocations.
  const gotSlots = new Map<number, number>();
  const veneerSlots = new Map<number, number>();
  for (const { entries } of c.relocationSections()) {
    for (const r of entries) {
      const kind = arch.relocKind(r.type);
      const sym = c.symbols[r.sym];
      if (kind === 'gotpc32' && !gotSlots.has(r.sym)) gotSlots.set(r.sym, gotSlots.size);
      if (kind === 'plt32' && sym && sym.shndx === SHN_UNDEF && !veneerSlots.has(r.sym)) veneerSlots.set(r.sym, veneerSlots.size);
    }
  }
  const reserveOffset = alignUp(sizes.rw, 16);
  if (reserveRw) sizes.rw = reserveOffset + reserveRw;
  const gotOffset = alignUp(sizes.r, GOT_ENTRY);
  if (gotSlots.size) sizes.r = gotOffset + gotSlots.size * GOT_ENTRY;
  const veneerOffset = alignUp(sizes.rx, 16);
  if (veneerSlots.size) sizes.rx = veneerOffset + veneerSlots.size * VENEER_SLOT;
  return { sizes, offset, gotOffset, gotSlots, veneerOffset, veneerSlots, reserveOffset };
}

/**
 * Allocate the regions in the target near `base` (the target maps all or
 * none). `onAlloc` lets the engine journal the allocations before anything
 * else can fail.
 */
function allocate(target: Target, base: BaseObject, sizes: Record<Perm, number>, onAlloc: (r: LinkedRegion[]) => void): Record<Perm, LinkedRegion | undefined> {
  const total = sizes.rx + sizes.r + sizes.rw;
  if (total > MAX_PAYLOAD_MEMORY) {
    fail('ENOMEM', `the payload needs ${total} bytes of memory once laid out; at most ${MAX_PAYLOAD_MEMORY} (64 MiB) is supported`);
  }
  const out: Record<Perm, LinkedRegion | undefined> = { rx: undefined, r: undefined, rw: undefined };
  const perms = (['rx', 'r', 'rw'] as Perm[]).filter((perm) => sizes[perm]);
  // One call for the three: a live target maps them together, in one stop.
  const reqs = perms.map((perm) => ({ perm, size: alignUp(sizes[perm], PAGE) }));
  const addrs = reqs.length ? target.allocate(reqs, base) : [];
  const regions = reqs.map((r, i) => (out[r.perm] = { perm: r.perm, addr: addrs[i]!, size: r.size, bytes: new Uint8Array(r.size) }));
  if (regions.length) onAlloc(regions);
  return out;
}

export interface LinkContext {
  target: Target;
  base: BaseObject;
  exports: ExportLookup;
  /** The regions just allocated (one call for all). */
  onAlloc: (r: LinkedRegion[]) => void;
  /** Extra bytes to reserve at the end of the data region (the hook argument). */
  reserveRw: number;
}

/**
 * Lay out, allocate, resolve and relocate a payload, pulling its parse
 * stages (relocation sections, symbols, relocation entries) as Xen checks
 * them, between the steps that need addresses.
 */
export function link(c: Payload, ctx: LinkContext): Linked {
  const lay = layout(c, ctx.reserveRw);
  const sectionAddr: (bigint | undefined)[] = [];
  const sectionBytes: (Uint8Array | undefined)[] = [];
  const externals: ExternalRecord[] = [];
  // A live target is held in one stop around all of this by the caller (upload).
  const regs = allocate(ctx.target, ctx.base, lay.sizes, ctx.onAlloc);
  for (const s of c.elf.sections) {
    if (s.index === 0 || !isLoaded(s)) continue;
    const reg = regs[regionOf(s)]!;
    const off = lay.offset[s.index]!;
    sectionAddr[s.index] = reg.addr + BigInt(off);
    const dst = reg.bytes.subarray(off, off + Number(s.size));
    if (s.type !== SHT_NOBITS) dst.set(c.elf.data(s));
    sectionBytes[s.index] = dst;
  }
  const got = regs.r && lay.gotSlots.size ? regs.r.addr + BigInt(lay.gotOffset) : 0n;
  const symbolValue = resolveSymbols(c, sectionAddr, ctx, got, externals);
  const relocated = relocate(c, lay, regs, sectionAddr, sectionBytes, symbolValue);
  const regions = [regs.rx, regs.r, regs.rw].filter((r): r is LinkedRegion => !!r);
  const text = regs.rx ? { start: regs.rx.addr, end: regs.rx.addr + BigInt(lay.sizes.rx) } : null;
  return {
    regions,
    sectionAddr,
    sectionBytes,
    symbolValue,
    externals,
    relocated,
    text,
    reserved: ctx.reserveRw && regs.rw ? regs.rw.addr + BigInt(lay.reserveOffset) : 0n,
    readLocalUpTo(addr, max) {
      for (const r of regions) {
        if (addr >= r.addr && addr < r.addr + BigInt(r.size)) {
          const o = Number(addr - r.addr);
          return r.bytes.subarray(o, Math.min(r.size, o + max));
        }
      }
      return undefined;
    },
  };
}

/** An undefined symbol's value and where it came from. */
export interface Resolved {
  addr: bigint;
  source: Exclude<SymbolSource, 'local'>;
  /** For 'external': the defining object, and whether addr is an IFUNC resolver. */
  object?: string;
  ifuncResolver?: boolean;
}

/** Resolve one undefined symbol: base, then loaded payloads, then other objects. */
export function resolveUndefined(name: string, ctx: Pick<LinkContext, 'base' | 'exports' | 'target'>): Resolved | undefined {
  const b = ctx.base.lookup(name);
  if (b) return { addr: b.addr, source: 'base' };
  const p = ctx.exports(name);
  if (p !== undefined) return { addr: p, source: 'payload' };
  const e = ctx.target.lookupExternal(name);
  return e ? { addr: e.addr, source: 'external', object: e.object, ifuncResolver: e.ifuncResolver } : undefined;
}

/** The linker-defined symbol -fPIC code mentions; it names the payload's own GOT. */
const GOT_SYMBOL = '_GLOBAL_OFFSET_TABLE_';

function resolveSymbols(c: Payload, sectionAddr: (bigint | undefined)[], ctx: LinkContext, got: bigint, externals: ExternalRecord[]): bigint[] {
  const symbols = c.checkedSymbols();
  const out: bigint[] = new Array(symbols.length).fill(0n);
  for (let i = 1; i < symbols.length; i++) {
    const s = symbols[i]!;
    out[i] = s.shndx === SHN_UNDEF && s.name === GOT_SYMBOL ? got : symbolValue(s, sectionAddr, c, ctx, externals);
  }
  return out;
}

function symbolValue(s: ElfSymbol, sectionAddr: (bigint | undefined)[], c: Payload, ctx: LinkContext, externals: ExternalRecord[]): bigint {
  if (s.shndx === SHN_UNDEF) {
    const v = resolveUndefined(s.name, ctx);
    if (v === undefined) {
      fail('ENOENT', `unknown symbol ${s.name}: not in the base ${ctx.base.path}, nor exported by a loaded payload, nor in ${ctx.target.externalScope()} (if a payload loaded earlier exports it, load that one first)`, symbolOffset(c, s));
    }
    if (v.source === 'external' && !externals.some((x) => x.symbol === s.name)) {
      externals.push({ symbol: s.name, object: v.object!, ...(v.ifuncResolver ? { ifuncResolver: true } : {}) });
    }
    return v.addr;
  }
  if (s.shndx === SHN_ABS) return s.value;
  if ((c.elf.sections[s.shndx]!.flags & SHF_ALLOC) === 0n) return s.value;
  return s.value + (sectionAddr[s.shndx] ?? 0n);
}

function relocate(
  c: Payload,
  lay: Layout,
  regs: Record<Perm, LinkedRegion | undefined>,
  sectionAddr: (bigint | undefined)[],
  sectionBytes: (Uint8Array | undefined)[],
  symbolValue: bigint[],
): Map<number, Set<number>> {
  const relocated = new Map<number, Set<number>>();
  // GOT slots hold the symbol values.
  for (const [sym, slot] of lay.gotSlots) {
    const o = lay.gotOffset + slot * GOT_ENTRY;
    new DataView(regs.r!.bytes.buffer).setBigUint64(o, BigInt.asUintN(64, symbolValue[sym] ?? 0n), true);
  }
  for (const { rel, target, entries } of c.relocations()) {
    const buf = sectionBytes[target.index];
    const base = sectionAddr[target.index] ?? 0n;
    const done = new Set<number>();
    relocated.set(target.index, done);
    for (const r of entries) {
      const kind = r.kind;
      const what = relaLabel(rel, r);
      if (!buf) fail('EINVAL', `${what}: section ${target.name} is not loaded`, r.at);
      const off = Number(r.offset);
      const P = base + r.offset;
      let value = symbolValue[r.sym]! + r.addend;
      if (kind === 'gotpc32') {
        value = regs.r!.addr + BigInt(lay.gotOffset + lay.gotSlots.get(r.sym)! * GOT_ENTRY) + r.addend;
      } else if (kind === 'plt32' && !arch.branchReaches(BigInt.asIntN(64, value - P)) && lay.veneerSlots.has(r.sym)) {
        const vo = lay.veneerOffset + lay.veneerSlots.get(r.sym)! * VENEER_SLOT;
        regs.rx!.bytes.set(arch.encodeVeneer(symbolValue[r.sym]!), vo);
        value = regs.rx!.addr + BigInt(vo) + r.addend;
      }
      const symName = c.symbols[r.sym]!.name || `section ${c.elf.sections[c.symbols[r.sym]!.shndx]?.name ?? '?'}`;
      arch.writeReloc(buf, off, kind, value, P, `${what} against ${symName}`);
      done.add(off);
    }
  }
  return relocated;
}
