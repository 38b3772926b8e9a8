/**
 * Non-code references to functions: pointers stored in data (executables
 * keep the final address in the word), dynamic relocations that produce a
 * function's address at load time (PIE and shared objects), and dynamic
 * symbols other objects can bind to. Indexed once per object.
 */
import type { ElfFile, ElfSymbol } from '../elf/index.js';
import {
  readRelas, readSymbols, SHF_ALLOC, SHF_EXECINSTR, SHN_UNDEF, SHT_DYNSYM, SHT_PROGBITS, SHT_RELA, STB_LOCAL,
  STT_FUNC, STT_GNU_IFUNC, SHT_NOBITS,
} from '../elf/index.js';
import type { CodeImage } from './decode.js';

const SHT_DYNAMIC = 6, DT_INIT = 12n, DT_FINI = 13n;
const SHT_INIT_ARRAY = 14, SHT_FINI_ARRAY = 15, SHT_PREINIT_ARRAY = 16;
const R_64 = 1, R_GLOB_DAT = 6, R_JUMP_SLOT = 7, R_RELATIVE = 8, R_IRELATIVE = 37;

export class DataRefs {
  /** Target -> addresses of data words holding it. */
  readonly words = new Map<number, number[]>();
  /** Target -> addresses the dynamic loader writes it to. */
  readonly relocs = new Map<number, number[]>();
  /** Target -> exported dynamic symbol names (defined, global or weak, default visibility). */
  readonly exports = new Map<number, string[]>();
  /** Functions the loader or kernel enters: e_entry, DT_INIT, DT_FINI. */
  readonly loader = new Set<number>();
  /** GOT slot address -> name of the symbol the loader puts there (JUMP_SLOT, GLOB_DAT), to name PLT targets. */
  readonly slots = new Map<number, string>();
  /** Tables that could not be read (references through them are missing). */
  readonly problems: string[] = [];

  constructor(private readonly elf: ElfFile, private readonly code: CodeImage) {
    if (code.isExec) this.scanWords();
    const dyn = elf.sections.find((s) => s.type === SHT_DYNSYM);
    let dynsyms: ElfSymbol[] = [];
    if (dyn) {
      try {
        dynsyms = readSymbols(elf, dyn);
      } catch (e) {
        this.problems.push(`.dynsym is unreadable (${(e as Error).message})`);
      }
    }
    for (const s of dynsyms) {
      if (s.shndx === SHN_UNDEF || s.bind === STB_LOCAL || (s.other & 3) !== 0) continue;
      if (s.type !== STT_FUNC && s.type !== STT_GNU_IFUNC) continue;
      const t = code.toInternal(s.value);
      if (Number.isFinite(t)) add(this.exports, t, s.name.replace(/@.*$/, ''));
    }
    this.scanRelocs(dynsyms);
    this.scanLoaderEntries();
  }

  /** The entry point and DT_INIT/DT_FINI: the kernel and the dynamic loader call these. */
  private scanLoaderEntries(): void {
    const entry = this.code.toInternal(this.elf.header.entry);
    if (this.elf.header.entry !== 0n && Number.isFinite(entry)) this.loader.add(entry);
    const dyn = this.elf.sections.find((s) => s.type === SHT_DYNAMIC);
    if (!dyn || !this.elf.inFile(dyn)) return;
    const d = this.elf.data(dyn);
    const dv = new DataView(d.buffer, d.byteOffset, d.byteLength);
    for (let o = 0; o + 16 <= d.length; o += 16) {
      const tag = dv.getBigInt64(o, true);
      if (tag === 0n) break;
      if (tag === DT_INIT || tag === DT_FINI) {
        const t = this.code.toInternal(dv.getBigUint64(o + 8, true));
        if (Number.isFinite(t)) this.loader.add(t);
      }
    }
  }

  private scanWords(): void {
    for (const s of this.elf.sections) {
      if (!(s.flags & SHF_ALLOC) || s.flags & SHF_EXECINSTR || s.type === SHT_NOBITS || !this.elf.inFile(s)) continue;
      if (s.type !== SHT_PROGBITS && s.type !== SHT_INIT_ARRAY && s.type !== SHT_FINI_ARRAY && s.type !== SHT_PREINIT_ARRAY) continue;
      if (s.name.startsWith('.eh_frame') || s.name === '.gcc_except_table' || s.name.startsWith('.note') || s.name === '.interp') continue;
      const data = this.elf.data(s);
      const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
      const first = Number((8n - (s.addr % 8n)) % 8n);
      const start = this.code.toInternal(s.addr);
      if (!Number.isFinite(start)) continue;
      for (let o = first; o + 8 <= data.length; o += 8) {
        const lo = dv.getUint32(o, true);
        const hi = dv.getUint32(o + 4, true);
        if (lo === 0 && hi === 0) continue;
        const v = BigInt(hi) * 0x100000000n + BigInt(lo);
        const t = this.code.toInternal(v);
        if (Number.isFinite(t) && this.code.sectionAt(t)) add(this.words, t, start + o);
      }
    }
  }

  private scanRelocs(dynsyms: ElfSymbol[]): void {
    for (const s of this.elf.sections) {
      if (s.type !== SHT_RELA || !(s.flags & SHF_ALLOC)) continue;
      let relas;
      try {
        relas = readRelas(this.elf, s);
      } catch (e) {
        this.problems.push(`relocation section ${s.name} is unreadable (${(e as Error).message})`);
        continue;
      }
      const symsHere = this.elf.sections[s.link]?.type === SHT_DYNSYM ? dynsyms : [];
      for (const r of relas) {
        let target: bigint | undefined;
        if (r.type === R_JUMP_SLOT || r.type === R_GLOB_DAT) {
          const sym = symsHere[r.sym];
          const at = this.code.toInternal(r.offset);
          if (sym && sym.name && Number.isFinite(at)) this.slots.set(at, sym.name.replace(/@.*$/, ''));
        }
        if (r.type === R_RELATIVE || r.type === R_IRELATIVE) target = BigInt.asUintN(64, r.addend);
        else if (r.type === R_64 || r.type === R_GLOB_DAT || r.type === R_JUMP_SLOT) {
          const sym = symsHere[r.sym];
          if (!sym || sym.shndx === SHN_UNDEF || (sym.type !== STT_FUNC && sym.type !== STT_GNU_IFUNC)) continue;
          target = BigInt.asUintN(64, sym.value + (r.type === R_64 ? r.addend : 0n));
        }
        if (target === undefined) continue;
        const t = this.code.toInternal(target);
        const at = this.code.toInternal(r.offset);
        if (Number.isFinite(t) && Number.isFinite(at)) add(this.relocs, t, at);
      }
    }
  }
}

function add<K, V>(m: Map<K, V[]>, k: K, v: V): void {
  const l = m.get(k);
  if (l) l.push(v);
  else m.set(k, [v]);
}
