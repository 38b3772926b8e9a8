/**
 * Is a function (or datum) of PATCHED.o the same as its ORIG.o twin? Same
 * size, same bytes outside relocated fields, same relocations pointing at
 * the same things. "The same thing" is decided by `targetKey`, which names
 * targets so that what merely moved does not count: strings by their
 * contents, read-only data by its bytes, functions and variables by name
 * without gcc's numeric suffixes.
 */
import { cString, SHN_UNDEF, type Rela } from '../elf/index.js';
import { isPcRelative, relocSpan, sectionKind, type DiffObject, type ObjSymbol } from './object.js';

/** Where a relocation points, in a form comparable across ORIG.o and PATCHED.o. */
export function targetKey(obj: DiffObject, r: Rela): string {
  const t = obj.symbols[r.sym]!;
  if (t.shndx === SHN_UNDEF || t.shndx >= obj.elf.sections.length) return `U:${t.name}:${r.addend}`;
  const sec = obj.elf.sections[t.shndx]!;
  const off = t.value + r.addend;
  switch (sectionKind(sec)) {
    case 'strings': {
      const data = obj.elf.data(sec);
      const at = Number(off) + (isPcRelative(r.type) ? 4 : 0);
      if (at < 0 || at >= data.length) return `S?${sec.name}:${off}`;
      try {
        return `S:${JSON.stringify(cString(data, at, 'string'))}`;
      } catch {
        return `S?${sec.name}:${off}`;
      }
    }
    case 'rodata':
      return `R:${obj.sectionHex(sec)}:${off}`;
    case 'text':
    case 'data':
    case 'tls': {
      const d = obj.symbolAt(sec.index, off);
      return d ? `${d.kind}:${d.key}:${off - d.sym.value}` : `${sec.name}:${off}`;
    }
    default:
      return `${sec.name}:${off}`;
  }
}

/** Bytes of `bytes` with every relocated field (and what the linker may rewrite around it) zeroed. */
export function masked(bytes: Uint8Array, relocs: readonly Rela[]): Uint8Array {
  const out = Uint8Array.from(bytes);
  for (const r of relocs) {
    const { before, width } = relocSpan(r.type);
    const from = Math.max(0, Number(r.offset) - before);
    out.fill(0, from, Math.min(out.length, Number(r.offset) + width));
  }
  return out;
}

/** Opcodes of `mov $imm32, %reg` for the argument registers %ecx, %edx, %esi, %edi (and %r8d/%r9d after 0x41). */
const MOV_ARG_IMM = new Set([0xb9, 0xba, 0xbe, 0xbf]);
const MOV_R8_R9_IMM = new Set([0xb8, 0xb9]);

/**
 * Differences that only move `__LINE__`: every differing byte lies in the
 * immediate of a `mov $imm32` into an argument register that is followed
 * (later in the function) by a call to one of `lineFns` (`__assert_fail`,
 * --line-macro). Both sides have the same size and relocations.
 */
function onlyLineNumbers(o: Uint8Array, p: Uint8Array, relocs: readonly Rela[], obj: DiffObject, lineFns: ReadonlySet<string>): boolean {
  const calls = relocs.filter((r) => lineFns.has(obj.symbols[r.sym]!.name)).map((r) => Number(r.offset));
  if (!calls.length) return false;
  for (let i = 0; i < o.length; i++) {
    if (o[i] === p[i]) continue;
    let covered = -1;
    for (let j = Math.max(0, i - 4); j < i && covered < 0; j++) {
      const op = o[j]!;
      const isMov = op === p[j] && (MOV_ARG_IMM.has(op) || (j > 0 && o[j - 1] === 0x41 && p[j - 1] === 0x41 && MOV_R8_R9_IMM.has(op)));
      if (isMov && i <= j + 4 && calls.some((c) => c > j + 4)) covered = j;
    }
    if (covered < 0) return false;
    i = covered + 4; // the rest of this immediate may differ too
  }
  return true;
}

export interface Comparison {
  changed: boolean;
  /** Why, for the report: 'size', 'bytes', 'relocations', or 'line numbers only' when unchanged but for __LINE__. */
  why: string;
}

/** Compare a function or datum of ORIG.o with its twin in PATCHED.o. */
export function compareSymbols(orig: DiffObject, o: ObjSymbol, patched: DiffObject, p: ObjSymbol, lineFns: ReadonlySet<string>): Comparison {
  if (o.sym.size !== p.sym.size) return { changed: true, why: `size ${o.sym.size} -> ${p.sym.size}` };
  const or = orig.relocsOf(o);
  const pr = patched.relocsOf(p);
  if (or.length !== pr.length) return { changed: true, why: 'relocations' };
  for (let i = 0; i < or.length; i++) {
    const a = or[i]!;
    const b = pr[i]!;
    if (a.offset !== b.offset || a.type !== b.type || targetKey(orig, a) !== targetKey(patched, b)) return { changed: true, why: 'relocations' };
  }
  const ob = masked(orig.bytesOf(o), or);
  const pb = masked(patched.bytesOf(p), pr);
  let same = true;
  for (let i = 0; i < ob.length && same; i++) same = ob[i] === pb[i];
  if (same) return { changed: false, why: '' };
  if (o.kind === 'func' && onlyLineNumbers(ob, pb, pr, patched, lineFns)) return { changed: false, why: 'line numbers only' };
  return { changed: true, why: 'bytes' };
}
