/**
 * Safety: ORIG.o must be the code the base runs. A payload diffed from
 * objects built with another compiler or other flags would carry changes
 * nobody made, or miss ones it needs; so every function of ORIG.o present
 * in the base must have the base's size and bytes (outside relocated
 * fields, which only the linker fills in), or failing that the same
 * instructions laid out differently (layout.ts: jump relaxation and padding
 * differ when the base was built without -ffunction-sections).
 */
import { fail, toHotstackError } from '../errors.js';
import type { ElfFile } from '../elf/index.js';
import { baseNameOf, type BaseNames } from './basename.js';
import { masked } from './compare.js';
import { sameCode } from './layout.js';
import type { DiffObject } from './object.js';

/** Largest base function compared (a corrupt symbol size must not make us read gigabytes). */
const MAX_FUNCTION = 16 << 20;

/**
 * Refuse (EINVAL, naming the function) when ORIG.o does not match the
 * base; `skip` lists functions a payload lower in the stack patches (their
 * base bytes are older than ORIG.o). Returns how many functions matched
 * and how many were skipped for that reason.
 */
export function checkOrigMatchesBase(base: BaseNames & { elf: ElfFile }, orig: DiffObject, skip: ReadonlySet<string>): { matched: number; skipped: number } {
  let matched = 0;
  let skipped = 0;
  for (const f of orig.functions()) {
    if (f.sym.size === 0n) continue;
    const name = baseNameOf(base, orig, f);
    if (name === undefined) continue;
    if (skip.has(name)) {
      skipped++;
      continue;
    }
    const b = base.index.lookup(name);
    if (!b || !b.isFunc) continue;
    if (b.size > BigInt(MAX_FUNCTION)) fail('E2BIG', `function ${name} of the base ${base.path} is ${b.size} bytes; at most ${MAX_FUNCTION} are compared`);
    const how = "built with another compiler or other flags than the base (build the objects with the base's compiler and flags plus -ffunction-sections -fdata-sections; hotstack build --source: give the base's flags after -- or use --cflags-from-dwarf)";
    let code: Uint8Array;
    try {
      code = base.elf.readVirtual(b.value, Number(b.size));
    } catch (e) {
      fail('EINVAL', `function ${name} of the base ${base.path} cannot be read: ${toHotstackError(e).message}`);
    }
    const relocs = orig.relocsOf(f);
    const mine = masked(orig.bytesOf(f), relocs);
    const theirs = masked(code, relocs);
    const at = b.size !== f.sym.size ? -2 : mine.findIndex((v, i) => v !== theirs[i]);
    if (at !== -1 && !sameCode(orig.bytesOf(f), relocs, code)) {
      const what = at === -2 ? `${f.sym.size} bytes in ${orig.path} but ${b.size} in the base ${base.path}` : `byte ${at} differs between ${orig.path} and the base ${base.path}`;
      fail('EINVAL', `function ${name}: ${what}, and not only by layout: ${orig.path} was ${how}`);
    }
    matched++;
  }
  return { matched, skipped };
}
