/**
 * Other copies of a function's code: compiler clones (`f.constprop.N`,
 * `f.isra.N`, `f.part.N`, `f.cold`, `f.lto_priv.N`, ...), which a patch of
 * f does not reach, and other symbols at f's address (aliases, identical
 * code folded by -fipa-icf or the linker), which it does.
 */
import type { FunctionReport } from './types.js';
import type { FuncSym, FunctionTable } from './functions.js';

export type Copy = FunctionReport['copies'][number];

const KINDS = new Set(['constprop', 'isra', 'part', 'cold']);

/** `exp` of `exp@@GLIBC_2.29` or `exp@GLIBC_2.2.5`: the name without its symbol version. */
function unversioned(name: string): string {
  const at = name.indexOf('@');
  return at > 0 ? name.slice(0, at) : name;
}

/** Copies and aliases of `f`, by address then name. */
export function copiesOf(table: FunctionTable, f: FuncSym, toAddr: (at: number) => bigint): Copy[] {
  const out = new Map<string, Copy>();
  const prefix = f.name + '.';
  const plain = unversioned(f.name);
  for (const s of table.all) {
    if (s === f || s.name === f.name) continue;
    if (s.start === f.start) {
      out.set(s.display, { name: s.display, addr: toAddr(s.start), kind: 'alias' });
      continue;
    }
    // Another version of the same name (glibc keeps old ones for old programs): separate code.
    if (s.global && s.name.includes('@') && unversioned(s.name) === plain) {
      out.set(s.display, { name: s.display, addr: toAddr(s.start), kind: 'version' });
      continue;
    }
    // C names cannot contain a dot: `f.<anything>` is something the compiler made from f.
    if (!s.name.startsWith(prefix)) continue;
    if (!f.global && s.file !== undefined && f.file !== undefined && s.file !== f.file) continue;
    const first = s.name.slice(prefix.length).split('.')[0]!;
    const kind = KINDS.has(first) ? (first as Copy['kind']) : 'clone';
    out.set(s.display, { name: s.display, addr: toAddr(s.start), kind });
  }
  return [...out.values()].sort((a, b) => (a.addr < b.addr ? -1 : a.addr > b.addr ? 1 : a.name.localeCompare(b.name)));
}
