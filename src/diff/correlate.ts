/**
 * Which symbol of ORIG.o each function and datum of PATCHED.o is. By name
 * without gcc's numeric suffixes (`f.isra.2` is `f.isra.0`); static locals
 * (`count.3`) by that name and the functions referencing them, so two
 * `count`s in different functions stay apart. Special statics (`.LC*`,
 * `__func__`, switch tables) are never correlated: they are read-only and
 * copied by contents.
 */
import { isSpecialStatic, sectionKind, type DiffObject, type ObjSymbol } from './object.js';

/** A static local: local data whose name carries gcc's `.N`. */
export function isStaticLocal(d: ObjSymbol): boolean {
  return d.kind === 'data' && !d.global && /\.\d+$/.test(d.name) && !isSpecialStatic(d.name);
}

/** Static locals each function references (function name -> data keys), and the reverse. */
export function staticLocalUses(obj: DiffObject): { byFunction: Map<string, Set<string>>; byLocal: Map<number, string[]> } {
  const byFunction = new Map<string, Set<string>>();
  const byLocal = new Map<number, string[]>();
  for (const f of obj.functions()) {
    const used = new Set<string>();
    for (const r of obj.relocsOf(f)) {
      const t = obj.symbols[r.sym]!;
      const sec = obj.elf.sections[t.shndx];
      if (!sec || sectionKind(sec) !== 'data' && sectionKind(sec) !== 'tls') continue;
      const d = obj.symbolAt(sec.index, t.value + r.addend);
      if (!d || !isStaticLocal(d)) continue;
      used.add(d.key);
      const users = byLocal.get(d.sym.index) ?? [];
      if (!users.includes(f.key)) users.push(f.key);
      byLocal.set(d.sym.index, users);
    }
    byFunction.set(f.name, used);
  }
  return { byFunction, byLocal };
}

/** PATCHED symbol index -> its ORIG twin (absent: new in PATCHED). */
export function correlate(orig: DiffObject, patched: DiffObject): Map<number, ObjSymbol> {
  const out = new Map<number, ObjSymbol>();
  const ou = staticLocalUses(orig).byLocal;
  const pu = staticLocalUses(patched).byLocal;
  const keyOf = (d: ObjSymbol, uses: Map<number, string[]>): string | undefined => {
    if (isSpecialStatic(d.name)) return undefined;
    if (isStaticLocal(d)) return `${d.key}@${(uses.get(d.sym.index) ?? []).sort().join(',')}`;
    return `${d.kind}:${d.global ? 'g' : 'l'}:${d.key}`;
  };
  const byKey = new Map<string, ObjSymbol[]>();
  for (const d of orig.defined.values()) {
    const k = keyOf(d, ou);
    if (k !== undefined) byKey.set(k, [...(byKey.get(k) ?? []), d]);
  }
  const byName = new Map<string, ObjSymbol>();
  for (const d of orig.defined.values()) byName.set(`${d.kind}:${d.name}`, d);
  for (const p of patched.defined.values()) {
    const k = keyOf(p, pu);
    if (k === undefined) continue;
    const cands = byKey.get(k) ?? [];
    // Several ORIG symbols share the key (two constprop clones): only the same full name correlates.
    const twin = cands.length === 1 ? cands[0] : cands.find((c) => c.name === p.name) ?? (isStaticLocal(p) ? undefined : byName.get(`${p.kind}:${p.name}`));
    if (twin) out.set(p.sym.index, twin);
  }
  // A static local whose referencing functions changed (a new user): same name, one candidate.
  for (const p of patched.data()) {
    if (out.has(p.sym.index) || !isStaticLocal(p)) continue;
    const same = orig.data().filter((o) => isStaticLocal(o) && o.key === p.key);
    if (same.length === 1) out.set(p.sym.index, same[0]!);
  }
  return out;
}
