/**
 * What goes into the payload for one ORIG.o / PATCHED.o pair, and what is
 * refused. Included: changed functions (a record each, unless the base has
 * no callable copy of them), new functions, new data, and the read-only
 * data and strings they use; `.cold` children follow their parent, a
 * changed child brings its parent. Everything else an included section
 * refers to stays an undefined symbol, named as the base names it.
 */
import { fail } from '../errors.js';
import { SHN_UNDEF, STT_GNU_IFUNC, type Rela } from '../elf/index.js';

/** Section index of a common (-fcommon) symbol. */
const SHN_COMMON = 0xfff2;
import { baseNameOf, externalName, type BaseNames } from './basename.js';
import { compareSymbols, targetKey } from './compare.js';
import { correlate, isStaticLocal, staticLocalUses } from './correlate.js';
import { sectionKind, type DiffObject, type ObjSymbol } from './object.js';

/** Where a relocation of an included section points once emitted. */
export type Target =
  | { kind: 'section'; section: number; addend: bigint }
  | { kind: 'external'; name: string; addend: bigint };

export interface PlannedReloc {
  rela: Rela;
  target: Target;
}

/** A function that gets a `.livepatch.funcs` record. */
export interface PlannedRecord {
  /** The base's name for it (`name` or `FILE#name`). */
  name: string;
  func: ObjSymbol;
}

export interface Plan {
  patched: DiffObject;
  /** PATCHED section indexes copied into the payload, in order. */
  sections: number[];
  /** Relocations of each copied section, rewritten. */
  relocs: Map<number, PlannedReloc[]>;
  /**
   * Functions and data defined by the payload (symbols of copied sections).
   * Global: new globals (later payloads may use them) and replacements with a
   * record; the rest stay local so they never clash with the base's names.
   */
  symbols: { sym: ObjSymbol; global: boolean }[];
  records: PlannedRecord[];
  /** For the report: why each function is in. */
  functions: { name: string; status: 'changed' | 'new' | 'follows'; why: string; record: string | null }[];
  /** Functions whose differences were only __LINE__. */
  lineOnly: string[];
}

export interface PlanOptions {
  base: BaseNames;
  /** Functions called with __LINE__ (`__assert_fail`, --line-macro). */
  lineFns: ReadonlySet<string>;
  /** The payload stacks on another (--depends): globals the base lacks may come from the payloads below. */
  stacked: boolean;
  /** Functions the payload below (--depends) brings: patched by name, found when loaded. */
  belowFunction: (name: string) => boolean;
  /** Base names of functions nothing reaches (inlined everywhere): no record, their callers carry the change. */
  unreached: (baseName: string) => boolean;
}

const CONSTRUCTOR_SECTION = /^\.(init_array|fini_array|preinit_array|ctors|dtors)(\.|$)/;

/** `f.cold`, `f.part.N`: the function `f` they were split from. */
function parentName(name: string): { parent: string; kind: 'cold' | 'part' } | undefined {
  const cold = /^(.+?)\.cold(\.\d+)?$/.exec(name);
  if (cold) return { parent: cold[1]!, kind: 'cold' };
  const part = /^(.+?)\.part\.\d+$/.exec(name);
  return part ? { parent: part[1]!, kind: 'part' } : undefined;
}

/** Functions the constructor and destructor tables of `obj` point at (keys). */
function constructorFunctions(obj: DiffObject): Set<string> {
  const out = new Set<string>();
  for (const sec of obj.elf.sections) {
    if (!CONSTRUCTOR_SECTION.test(sec.name)) continue;
    for (const r of obj.relocs.get(sec.index) ?? []) {
      const t = obj.symbols[r.sym]!;
      const d = obj.symbolAt(t.shndx, t.value + r.addend);
      if (d?.kind === 'func') out.add(d.key);
    }
  }
  return out;
}

function refuseConstructors(orig: DiffObject, patched: DiffObject): void {
  for (const sec of patched.elf.sections) {
    if (!CONSTRUCTOR_SECTION.test(sec.name)) continue;
    const twin = orig.elf.sections.find((s) => s.name === sec.name);
    const keys = (o: DiffObject, idx: number): string => (o.relocs.get(idx) ?? []).map((r) => `${r.offset}:${targetKey(o, r)}`).join(' ');
    if (!twin || twin.size !== sec.size || keys(orig, twin.index) !== keys(patched, sec.index)) {
      fail('EOPNOTSUPP', `${patched.path}: the patch adds or changes a constructor or destructor (${sec.name}); they ran when the program started and cannot be run again live: leave them out of the patch`);
    }
  }
}

/** Plan one pair. Throws HotstackError for every change that cannot be made live. */
export function planPair(orig: DiffObject, patched: DiffObject, opts: PlanOptions): Plan {
  refuseConstructors(orig, patched);
  const twin = correlate(orig, patched);
  const where = `${patched.path}`;

  // Data: existing variables keep their layout and value; TLS cannot be added or changed.
  for (const p of patched.data()) {
    const o = twin.get(p.sym.index);
    const kind = sectionKind(p.section);
    if (kind === 'rodata' || kind === 'strings') continue;
    const label = `${p.global ? 'variable' : 'static variable'} ${p.name}`;
    if (kind === 'tls') {
      if (!o || compareSymbols(orig, o, patched, p, opts.lineFns).changed) fail('EOPNOTSUPP', `${where}: thread-local ${label} is new or changed; threads already running have their copy, so TLS cannot change live`);
      continue;
    }
    if (!o) continue; // new data: included when used
    const c = compareSymbols(orig, o, patched, p, opts.lineFns);
    if (c.changed) {
      fail('EOPNOTSUPP', `${where}: ${label} changes (${c.why === 'bytes' ? 'initial value' : c.why}); the running program holds its current value and layout, which a patch cannot change live: keep the variable as it is (add a new one if needed)`);
    }
  }

  // Functions: changed, new, or the same.
  const status = new Map<number, { status: 'changed' | 'new' | 'follows'; why: string }>();
  const lineOnly: string[] = [];
  const byName = new Map(patched.functions().map((f) => [f.name, f]));
  const constructors = constructorFunctions(patched);
  const origUses = staticLocalUses(orig).byFunction;
  const patchedUses = staticLocalUses(patched).byFunction;
  for (const p of patched.functions()) {
    const o = twin.get(p.sym.index);
    if (p.sym.type === STT_GNU_IFUNC) {
      if (!o || compareSymbols(orig, o, patched, p, opts.lineFns).changed) fail('EOPNOTSUPP', `${where}: IFUNC ${p.name} is new or changed; its resolver ran when the program started: leave it out of the patch`);
      continue;
    }
    if (!o) {
      status.set(p.sym.index, { status: 'new', why: 'new function' });
      continue;
    }
    const c = compareSymbols(orig, o, patched, p, opts.lineFns);
    if (c.why === 'line numbers only') lineOnly.push(p.name);
    if (!c.changed) continue;
    if (constructors.has(p.key)) fail('EOPNOTSUPP', `${where}: constructor or destructor ${p.name} changes; constructors ran when the program started and are not run again live: leave it out of the patch`);
    status.set(p.sym.index, { status: 'changed', why: c.why });
    const before = origUses.get(o.name) ?? new Set<string>();
    const after = patchedUses.get(p.name) ?? new Set<string>();
    for (const s of before) {
      if (!after.has(s)) fail('EINVAL', `${where}: function ${p.name} no longer uses its static variable ${s}; its state lives in the running program and a patch that drops it cannot be correlated safely: keep a reference to ${s} (or rename the function)`);
    }
  }
  // Split children: a changed child brings its parent; a .cold child follows its parent.
  for (const [idx, s] of [...status]) {
    const p = patched.defined.get(idx)!;
    const rel = parentName(p.name);
    const parent = rel && byName.get(rel.parent);
    if (parent && !status.has(parent.sym.index) && s.status === 'changed') status.set(parent.sym.index, { status: 'changed', why: `its ${rel.kind} child ${p.name} changed` });
  }
  for (const f of patched.functions()) {
    const rel = parentName(f.name);
    const parent = rel && byName.get(rel.parent);
    if (rel?.kind === 'cold' && parent && status.has(parent.sym.index) && !status.has(f.sym.index)) status.set(f.sym.index, { status: 'follows', why: `cold part of ${parent.name}` });
  }

  // The closure: copy included sections, resolve what they use.
  const copied: number[] = [];
  const relocs = new Map<number, PlannedReloc[]>();
  const queue: number[] = [];
  const copy = (idx: number): void => {
    if (copied.includes(idx)) return;
    copied.push(idx);
    queue.push(idx);
  };
  for (const idx of status.keys()) copy(patched.defined.get(idx)!.section.index);
  const external = (name: string, addend: bigint): Target => ({ kind: 'external', name, addend });
  while (queue.length) {
    const idx = queue.shift()!;
    const sec = patched.elf.sections[idx]!;
    const user = patched.symbolAt(idx, 0n)?.name ?? sec.name; // the function or datum, for messages
    const out: PlannedReloc[] = [];
    for (const r of patched.relocs.get(idx) ?? []) {
      const t = patched.symbols[r.sym]!;
      if (t.shndx === SHN_UNDEF) {
        out.push({ rela: r, target: external(externalName(opts.base, t.name), r.addend) });
        continue;
      }
      const tsec = patched.elf.sections[t.shndx];
      if (t.shndx === SHN_COMMON) fail('EINVAL', `${where}: ${user} uses the common symbol ${t.name}; compile with -fno-common so every variable has its own section`);
      if (!tsec) fail('EINVAL', `${where}: a relocation of ${user} names symbol ${t.name || r.sym} in section ${t.shndx}, which does not exist`);
      const off = t.value + r.addend;
      const kind = sectionKind(tsec);
      const inside = (): Target => ({ kind: 'section', section: tsec.index, addend: off });
      if (kind === 'strings' || kind === 'rodata') {
        copy(tsec.index);
        out.push({ rela: r, target: inside() });
        continue;
      }
      if (kind === 'tls') fail('EOPNOTSUPP', `${where}: ${user} uses the thread-local ${t.name || tsec.name}; payloads cannot relocate TLS: keep thread-local variables out of the changed functions`);
      if (kind !== 'text' && kind !== 'data') fail('EINVAL', `${where}: ${user} refers to ${tsec.name}, which is not loaded code or data`);
      const d = patched.symbolAt(tsec.index, off);
      if (!d) {
        // Anonymous code or data (no symbol): ours to carry.
        copy(tsec.index);
        out.push({ rela: r, target: inside() });
        continue;
      }
      if (status.has(d.sym.index) || copied.includes(tsec.index)) {
        copy(tsec.index);
        out.push({ rela: r, target: inside() });
        continue;
      }
      const o = twin.get(d.sym.index);
      const name = o ? baseNameOf(opts.base, orig, o) : undefined;
      if (name !== undefined || (o && o.global && opts.stacked)) {
        out.push({ rela: r, target: external(name ?? o!.name, off - d.sym.value) });
        continue;
      }
      if (o && d.kind === 'data') {
        fail('ENOENT', `${where}: ${d.global ? 'variable' : 'static variable'} ${o.name} is not in the base ${opts.base.path} (removed by the linker, or ORIG.o is not the base's source): the changed code cannot reach it`);
      }
      // New, or a function the base has no copy of (a static inlined everywhere): carried along.
      if (d.kind === 'func' && !status.has(d.sym.index)) status.set(d.sym.index, { status: o ? 'follows' : 'new', why: o ? 'not in the base (inlined everywhere): carried along' : 'new' });
      copy(tsec.index);
      out.push({ rela: r, target: inside() });
    }
    relocs.set(idx, out);
  }

  // Records: changed functions the base has a callable copy of.
  const records: PlannedRecord[] = [];
  const functions: Plan['functions'] = [];
  for (const [idx, s] of status) {
    const p = patched.defined.get(idx)!;
    const o = twin.get(idx);
    let record: string | null = null;
    if (s.status === 'changed' && o && parentName(p.name)?.kind !== 'cold') {
      let name = baseNameOf(opts.base, orig, o);
      if (name === undefined && o.global) {
        // Not inlined away (globals stay), so it came with a payload lower in the stack: patched there, by name.
        if (!opts.belowFunction(o.name)) {
          fail('EOPNOTSUPP', `${where}: function ${p.name} changes but is neither in the base ${opts.base.path} nor brought by the payload it stacks on${opts.stacked ? '' : ' (give that payload with --depends)'}; or build a cumulative payload (--cumulative) for REPLACE instead`);
        }
        name = o.name;
      }
      if (name !== undefined && !opts.unreached(name)) {
        record = name;
        records.push({ name, func: p });
      }
    }
    functions.push({ name: p.name, status: s.status, why: s.why, record });
  }
  // New data (not in ORIG) is carried by the closure when used; unused new data is included too.
  for (const p of patched.data()) {
    if (!twin.has(p.sym.index) && !isStaticLocal(p) && sectionKind(p.section) === 'data' && !copied.includes(p.section.index)) {
      copied.push(p.section.index);
      relocs.set(p.section.index, planDataRelocs(patched, p.section.index, twin, orig, opts, copied, relocs));
    }
  }
  const recorded = new Set(records.map((r) => r.func.sym.index));
  const symbols = [...patched.defined.values()].filter((d) => copied.includes(d.section.index))
    .map((d) => ({ sym: d, global: d.global && (recorded.has(d.sym.index) || !twin.has(d.sym.index)) }));
  return { patched, sections: copied, relocs, symbols, records, functions, lineOnly };
}

/** Relocations of a new variable nothing changed uses (pointers in its initializer): to the base, or refused. */
function planDataRelocs(patched: DiffObject, idx: number, twin: Map<number, ObjSymbol>, orig: DiffObject, opts: PlanOptions, copied: number[], later: Map<number, PlannedReloc[]>): PlannedReloc[] {
  return (patched.relocs.get(idx) ?? []).map((r) => {
    const t = patched.symbols[r.sym]!;
    if (t.shndx === SHN_UNDEF) return { rela: r, target: { kind: 'external', name: externalName(opts.base, t.name), addend: r.addend } };
    const off = t.value + r.addend;
    const tsec = patched.elf.sections[t.shndx];
    const literal = tsec && sectionKind(tsec) === 'strings' && !(patched.relocs.get(t.shndx) ?? []).length;
    if (literal && !copied.includes(t.shndx)) {
      copied.push(t.shndx);
      later.set(t.shndx, []);
    }
    if (copied.includes(t.shndx)) return { rela: r, target: { kind: 'section', section: t.shndx, addend: off } };
    const d = patched.symbolAt(t.shndx, off);
    const o = d && twin.get(d.sym.index);
    const name = o ? baseNameOf(opts.base, orig, o) : undefined;
    if (!d || name === undefined) fail('EOPNOTSUPP', `${patched.path}: the initializer of new data in ${patched.elf.sections[idx]!.name} points at ${t.name || 'code or data'} the payload does not carry; use the new variable from a changed function`);
    return { rela: r, target: { kind: 'external', name, addend: off - d.sym.value } };
  });
}
