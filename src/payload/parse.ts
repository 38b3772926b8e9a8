/**
 * The one target-free pass over a payload file: it decodes the notes,
 * relocations, symbols, livepatch_func records, hooks and .modinfo, and
 * runs every rule that needs no base, once, in Xen's order, each failure a
 * HotstackError with its errno and (where a byte is to blame) file offset.
 *
 * The pass is split into stages because Xen interleaves these rules with
 * rules that do need a base (base build-id match, symbol resolution,
 * relocation values, old functions, EEXIST): an upload pulls each stage
 * just before its own base step, so a payload with two problems fails on
 * the one Xen finds first. Each stage runs the stages before it first and
 * runs once; `parsePayload` runs them all (inspect, build).
 */
import { fail } from '../errors.js';
import {
  cString, parseBuildIdNote, readRelas, SHF_ALLOC, SHF_WRITE, SHN_UNDEF, SHT_NOBITS, toHex,
  type ElfFile, type ElfSymbol, type Rela, type Section,
} from '../elf/index.js';
import type { RelocKind } from '../arch/index.js';
import { checkPayloadElf, type CheckedElf } from './elf-checks.js';
import { checkFuncsSize, decodeFuncs, FUNC_OFFSETS, type FuncRecordRaw } from './funcs.js';
import { checkNopSize } from './patch-size.js';
import {
  activeRelocSections, checkRela, checkSymbols, checkXenOnlySections,
} from './symbols-relocations.js';
import {
  FUNC_SIZE, HOOK_SECTIONS, HOOK_NAMES, MAX_PAYLOAD_SIZE, PATCHING_SECTIONS, PAYLOAD_VERSION, SEC, type HookName,
} from './sections.js';

/** A validated GNU build-id note section. */
export interface BuildIdNote {
  /** The build-id, lower-case hex. */
  hex: string;
  bytes: Uint8Array;
  section: Section;
}

/** A relocation entry whose rules passed, with its kind. */
export interface CheckedRela extends Rela {
  kind: RelocKind;
}

/** A relocation section that applies to a loaded section. */
export interface RelocSection {
  rel: Section;
  target: Section;
  entries: Rela[];
}

/** One livepatch_func record, decoded from the file (before relocation). */
export interface PayloadFunc extends FuncRecordRaw {
  /** The name for messages: the string the name pointer's relocation names, else the pointer or funcs[i]. */
  name: string;
  /** File offset of the record. */
  fileOffset: number;
  /** Relocations of the name, new_addr and old_addr fields, when present. */
  nameRel: Rela | undefined;
  newRel: Rela | undefined;
  oldRel: Rela | undefined;
  /** A NOP patch: new_addr is 0 and not relocated. */
  isNop: boolean;
}

/** A hook section whose size rules passed. */
export interface PayloadHook {
  kind: HookName;
  section: Section;
  /** The relocation of each 8-byte slot, when present. */
  slots: (Rela | undefined)[];
}

/** Payload size rule (actions.md upload): 1 byte .. 2 MiB (EINVAL). */
export function checkPayloadSize(len: number): void {
  if (len === 0) fail('EINVAL', 'payload file is empty');
  if (len > MAX_PAYLOAD_SIZE) fail('EINVAL', `payload is ${len} bytes; at most ${MAX_PAYLOAD_SIZE} (2 MiB)`);
}

/** Why each note is needed, for messages. */
const NOTE_PURPOSE: Record<string, string> = {
  [SEC.buildId]: 'own build-id (link with ld --build-id)',
  [SEC.depends]: 'dependency build-id',
  [SEC.xenDepends]: "base build-id (the base image's build-id it was built against)",
};

/** A build-id section: present once, non-empty, a valid note (EINVAL otherwise). */
function buildIdNote(elf: ElfFile, name: string): BuildIdNote {
  const secs = elf.sectionsNamed(name);
  if (secs.length === 0) fail('EINVAL', `${name} is missing: the payload has no ${NOTE_PURPOSE[name]}`);
  if (secs.length > 1) fail('EINVAL', `${name} appears ${secs.length} times`, secs[1]!.headerOffset);
  const s = secs[0]!;
  if (s.size === 0n) fail('EINVAL', `${name} is empty: the payload has no ${NOTE_PURPOSE[name]}`, s.headerOffset);
  const bytes = parseBuildIdNote(elf.data(s), name, Number(s.offset));
  return { hex: toHex(bytes), bytes, section: s };
}

/** The string a relocated pointer names inside the payload, if it names one. */
function stringAt(c: CheckedElf, r: Rela | undefined): string | undefined {
  if (!r) return undefined;
  const sym = c.symbols[r.sym];
  if (!sym || sym.shndx === SHN_UNDEF || sym.shndx >= c.elf.sections.length) return undefined;
  const sec = c.elf.sections[sym.shndx]!;
  if (sec.type === SHT_NOBITS) return undefined;
  try {
    return cString(c.elf.data(sec), Number(sym.value + r.addend), 'function name');
  } catch {
    return undefined;
  }
}

/**
 * A payload read from untrusted bytes. Constructing it runs the size and
 * ELF validation rules; each method below is one later stage of Xen's
 * order, memoised, running the stages before it first.
 */
export class Payload implements CheckedElf {
  readonly bytes: Uint8Array;
  readonly elf: ElfFile;
  readonly symtab: Section;
  readonly symbols: ElfSymbol[];
  private memo = new Map<string, unknown>();

  constructor(bytes: Uint8Array) {
    checkPayloadSize(bytes.length);
    const c = checkPayloadElf(bytes);
    this.bytes = bytes;
    this.elf = c.elf;
    this.symtab = c.symtab;
    this.symbols = c.symbols;
  }

  private once<T>(stage: string, run: () => T): T {
    if (!this.memo.has(stage)) this.memo.set(stage, run());
    return this.memo.get(stage) as T;
  }

  /** Stage 1: .livepatch.xen_depends, the base's build-id. */
  baseBuildId(): BuildIdNote {
    return this.once('base', () => buildIdNote(this.elf, SEC.xenDepends));
  }

  /**
   * Stage 2: the relocation sections that apply to loaded sections, their
   * section rules (symbol table link, RELA only, entry size), decoded.
   */
  relocationSections(): RelocSection[] {
    return this.once('relocSections', () => {
      this.baseBuildId();
      return activeRelocSections(this).map(({ rel, target }) => ({ rel, target, entries: readRelas(this.elf, rel) }));
    });
  }

  /** Stage 3: every symbol's section index rules (before symbols are resolved). */
  checkedSymbols(): ElfSymbol[] {
    return this.once('symbols', () => {
      this.relocationSections();
      checkSymbols(this);
      return this.symbols;
    });
  }

  /** Stage 4: every relocation entry's rules (symbol, offset, type), before any is applied. */
  relocations(): (RelocSection & { entries: CheckedRela[] })[] {
    return this.once('relocations', () => {
      this.checkedSymbols();
      return this.relocationSections().map((s) => ({ ...s, entries: s.entries.map((r) => ({ ...r, kind: checkRela(this, s.rel, s.target, r) })) }));
    });
  }

  /** Stage 5: the dependency's and the payload's own build-ids, in Xen's order (depends first). */
  notes(): { buildId: BuildIdNote; depends: BuildIdNote } {
    return this.once('notes', () => {
      this.relocations();
      const depends = buildIdNote(this.elf, SEC.depends);
      return { buildId: buildIdNote(this.elf, SEC.buildId), depends };
    });
  }

  /** Stage 6: the patching sections: each at most once and non-empty, at least one present. */
  patchingSections(): void {
    this.once('patching', () => {
      this.notes();
      let found = 0;
      for (const n of PATCHING_SECTIONS) {
        const secs = this.elf.sectionsNamed(n);
        if (secs.length === 0) continue;
        if (secs.length > 1) fail('EINVAL', `${n} appears ${secs.length} times`, secs[1]!.headerOffset);
        if (secs[0]!.size === 0n) fail('EINVAL', `${n} is empty`, secs[0]!.headerOffset);
        found++;
      }
      if (!found) fail('EINVAL', 'nothing to patch: the payload has neither .livepatch.funcs nor any .livepatch.hooks.* section');
      return true;
    });
  }

  /** The .livepatch.funcs section (after stage 6: present at most once, non-empty). */
  funcsSection(): Section | undefined {
    this.patchingSections();
    return this.elf.section(SEC.funcs);
  }

  /**
   * Stage 7: the records and their target-free rules, record by record:
   * version (EOPNOTSUPP), old_size (EINVAL), NOP size (EOPNOTSUPP, EINVAL).
   */
  funcs(): PayloadFunc[] {
    return this.once('funcs', () => {
      const sec = this.funcsSection();
      if (!sec) return [];
      checkFuncsSize(sec);
      if ((sec.flags & SHF_ALLOC) === 0n) fail('EINVAL', `${SEC.funcs} is not an allocated section`, sec.headerOffset);
      const rels = this.relocationsOf(sec);
      return decodeFuncs(this.elf.data(sec)).map((f) => {
        const at = f.index * FUNC_SIZE;
        const fileOffset = Number(sec.offset) + at;
        const nameRel = rels.get(at + FUNC_OFFSETS.name);
        const newRel = rels.get(at + FUNC_OFFSETS.newAddr);
        const name = stringAt(this, nameRel) ?? (f.namePtr ? `0x${f.namePtr.toString(16)}` : `funcs[${f.index}]`);
        if (f.version !== PAYLOAD_VERSION) {
          fail('EOPNOTSUPP', `function ${name}: livepatch_func version ${f.version}, only version ${PAYLOAD_VERSION} is supported`, fileOffset + FUNC_OFFSETS.version);
        }
        if (f.oldSize === 0) fail('EINVAL', `function ${name}: old_size is 0`, fileOffset + FUNC_OFFSETS.oldSize);
        const isNop = !newRel && f.newAddr === 0n;
        if (isNop) checkNopSize(f.newSize, f.oldSize, `function ${name}`, fileOffset + FUNC_OFFSETS.newSize);
        return { ...f, name, fileOffset, nameRel, newRel, oldRel: rels.get(at + FUNC_OFFSETS.oldAddr), isNop };
      });
    });
  }

  /** Stage 8: hook sections: whole 8-byte pointers, exactly one for a single hook, allocated (EINVAL). */
  hooks(): PayloadHook[] {
    return this.once('hooks', () => {
      this.funcs();
      const out: PayloadHook[] = [];
      for (const kind of HOOK_NAMES) {
        const def = HOOK_SECTIONS[kind];
        const s = this.elf.section(def.name);
        if (!s) continue;
        if (s.size % 8n !== 0n) fail('EINVAL', `${def.name} is ${s.size} bytes, not a multiple of 8`, s.headerOffset);
        if (!def.multi && s.size !== 8n) fail('EINVAL', `${def.name} must hold exactly one pointer (8 bytes), not ${s.size}`, s.headerOffset);
        if ((s.flags & SHF_ALLOC) === 0n) fail('EINVAL', `${def.name} is not an allocated section`, s.headerOffset);
        const rels = this.relocationsOf(s);
        const slots: (Rela | undefined)[] = [];
        for (let o = 0; o < Number(s.size); o += 8) slots.push(rels.get(o));
        out.push({ kind, section: s, slots });
      }
      return out;
    });
  }

  /** Stage 9 (after the upload's EEXIST rule): Xen-only tables' sizes, then .modinfo's strings. */
  metadata(): string[] {
    return this.once('metadata', () => {
      this.hooks();
      checkXenOnlySections(this);
      const s = this.elf.section(SEC.modinfo);
      if (!s || s.size === 0n) return [];
      const d = this.elf.data(s);
      if (d[d.length - 1] !== 0) fail('EINVAL', '.modinfo does not end with a NUL byte', Number(s.offset) + d.length - 1);
      const out: string[] = [];
      for (let o = 0; o < d.length; ) {
        const str = cString(d, o, '.modinfo');
        if (str.length) out.push(str);
        o += str.length + 1;
      }
      return out;
    });
  }

  /** No loaded writable section other than .livepatch.funcs (Xen's safe_to_reapply). */
  safeToReapply(): boolean {
    const rw = this.elf.sections.filter((s) => s.index !== 0 && (s.flags & SHF_ALLOC) !== 0n && s.size !== 0n && (s.flags & SHF_WRITE) !== 0n);
    return rw.length === 0 || (rw.length === 1 && rw[0]!.name === SEC.funcs);
  }

  /** Relocations applying to a section, by offset in it (stage 2 decoded them). */
  private relocationsOf(sec: Section): Map<number, Rela> {
    const m = new Map<number, Rela>();
    for (const s of this.relocationSections()) if (s.target.index === sec.index) for (const r of s.entries) m.set(Number(r.offset), r);
    return m;
  }

  /** Every stage: the whole payload checked (what `inspect` and `build` need). */
  complete(): this {
    this.metadata();
    return this;
  }
}

/** Parse and check a payload file without a target; throws the first rule it breaks, in Xen's order. */
export function parsePayload(bytes: Uint8Array): Payload {
  return new Payload(bytes).complete();
}
