/**
 * How a symbol of ORIG.o is named in the base: globals by name, statics as
 * `FILE#NAME` (the base's STT_FILE string, which is what gcc was given when
 * the base was built), matched on the object's own STT_FILE when several
 * files have a static of that name.
 */
import { basename } from 'node:path';
import { fail } from '../errors.js';
import { SHN_UNDEF, STB_LOCAL, STT_OBJECT, type ElfSymbol, type SymbolIndex } from '../elf/index.js';
import type { DiffObject, ObjSymbol } from './object.js';

/** What the diff needs of the base. */
export interface BaseNames {
  path: string;
  index: SymbolIndex;
  /** Local symbols by plain name -> `FILE#NAME` candidates. */
  locals: Map<string, string[]>;
  /**
   * Library variables the base holds copies of (copy relocations of a PIE or
   * executable: `stdout@GLIBC_2.2.5` in its .bss), by plain name. Code built
   * like the base reaches them PC-relative, so it must be given the base's copy.
   */
  copies: Map<string, string>;
}

/** The base's copy-relocated library variables (see BaseNames.copies) from its symbols. */
export function copiedVariables(symbols: readonly ElfSymbol[]): Map<string, string> {
  const out = new Map<string, string>();
  for (const s of symbols) {
    if (s.bind === STB_LOCAL || s.shndx === SHN_UNDEF || s.type !== STT_OBJECT) continue;
    const at = s.name.indexOf('@');
    if (at > 0) out.set(s.name.slice(0, at), s.name);
  }
  return out;
}

/** The name an undefined symbol of PATCHED.o gets in the payload. */
export function externalName(base: BaseNames, name: string): string {
  return base.index.hasGlobal(name) ? name : base.copies.get(name) ?? name;
}

/** The base's name for `d` of `obj`, or undefined when the base has no such symbol (inlined everywhere, dropped). */
export function baseNameOf(base: BaseNames, obj: DiffObject, d: ObjSymbol): string | undefined {
  if (d.global) return base.index.hasGlobal(d.name) ? d.name : undefined;
  const cands = base.locals.get(d.name) ?? [];
  if (cands.length <= 1) return cands[0];
  const file = obj.sourceName !== undefined ? basename(obj.sourceName) : undefined;
  const same = cands.filter((c) => c.includes('#') && basename(c.slice(0, c.lastIndexOf('#'))) === file);
  if (same.length === 1) return same[0];
  return fail('EINVAL', `static ${d.name} of ${obj.path} is ambiguous in the base ${base.path} (${cands.join(', ')}), and its source file ${obj.sourceName ?? '(none recorded)'} does not pick one: compile ORIG.o from the same path the base was built from`);
}
