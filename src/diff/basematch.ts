/**
 * Safety: ORIG.o must be the code the base runs. A payload diffed from
 * objects built with another compiler or other flags would carry changes
 * nobody made, or miss ones it needs; so every function of ORIG.o present
 * in the base must have the base's size and bytes (outside relocated
 * fields, which only the linker fills in).
 */
import { fail, toHotstackError } from '../errors.js';
import type { ElfFile } from '../elf/index.js';
import { baseNameOf, type BaseNames } from './basename.js';
import { masked } from './compare.js';
import type { DiffObject } from './object.js';

/**
 * Refuse (EINVAL, naming the function) when ORIG.o does not match the
 * base; `skip` lists functions a payload lower in the stack patches (their
 * base bytes are older than ORIG.o). Returns how many functions matched.
 */
export function checkOrigMatchesBase(base: BaseNames & { elf: ElfFile }, orig: DiffObject, skip: ReadonlySet<string>): number {
  let matched = 0;
  for (const f of orig.functions()) {
    if (f.sym.size === 0n) continue;
    const name = baseNameOf(base, orig, f);
    if (name === undefined || skip.has(name)) continue;
    const b = base.index.lookup(name);
    if (!b || !b.isFunc) continue;
    const how = "built with another compiler or other flags than the base (build the objects with the base's compiler and flags plus -ffunction-sections -fdata-sections; hotstack build --source: give the base's flags after -- or use --cflags-from-dwarf)";
    if (b.size !== f.sym.size) fail('EINVAL', `function ${name}: ${f.sym.size} bytes in ${orig.path} but ${b.size} in the base ${base.path}: ${orig.path} was ${how}`);
    let code: Uint8Array;
    try {
      code = base.elf.readVirtual(b.value, Number(b.size));
    } catch (e) {
      fail('EINVAL', `function ${name} of the base ${base.path} cannot be read: ${toHotstackError(e).message}`);
    }
    const relocs = orig.relocsOf(f);
    const mine = masked(orig.bytesOf(f), relocs);
    const theirs = masked(code, relocs);
    const at = mine.findIndex((v, i) => v !== theirs[i]);
    if (at >= 0) fail('EINVAL', `function ${name}: byte ${at} differs between ${orig.path} and the base ${base.path}: ${orig.path} was ${how}`);
    matched++;
  }
  return matched;
}
