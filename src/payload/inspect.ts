/**
 * Static view of a payload file, without a base: what `hotstack inspect`
 * shows. It renders what parsePayload decoded and checked (every rule that
 * needs no target); the rules that need a base (symbol resolution,
 * distances, EEXIST) are left to `check` and `upload`.
 */
import {
  SHF_ALLOC, SHF_EXECINSTR, SHF_WRITE, SHN_UNDEF, STT_FUNC, STT_OBJECT, toHex, type ElfSymbol, type Rela, type Section,
} from '../elf/index.js';
import type { CheckedElf } from './elf-checks.js';
import { parsePayload, type Payload } from './parse.js';
import { MAX_OPAQUE, type HookName } from './sections.js';

export interface InspectedFunc {
  name: string;
  /** Symbol (or number) the old_addr field resolves to; '0' means by name. */
  oldAddr: string;
  newAddr: string;
  oldSize: number;
  newSize: number;
  kind: 'jump' | 'nop';
  version: number;
  expect: { enabled: boolean; len: number; bytes: string } | null;
}

export interface InspectedPayload {
  buildId: string;
  depends: string;
  baseBuildId: string | null;
  funcs: InspectedFunc[];
  hooks: { kind: HookName; targets: string[] }[];
  metadata: string[];
  sections: { name: string; size: number; flags: string }[];
}

/** A relocation's symbol plus addend, named for a reader. */
function symLabel(c: CheckedElf, sym: ElfSymbol | undefined, addend: bigint): string {
  if (!sym) return '?';
  if (!sym.name && sym.shndx !== SHN_UNDEF) {
    // A section symbol plus offset: name the function or object defined there.
    const at = sym.value + addend;
    const named = c.symbols.find((s) => s.shndx === sym.shndx && s.name && s.value === at && (s.type === STT_OBJECT || s.type === STT_FUNC));
    if (named) return named.name;
  }
  let name = sym.name;
  if (!name) name = c.elf.sections[sym.shndx]?.name ?? `sym[${sym.index}]`;
  const v = sym.shndx === SHN_UNDEF ? addend : sym.value + addend;
  if (sym.shndx === SHN_UNDEF || sym.name) return addend ? `${name}${addend > 0 ? '+' : ''}${addend}` : name;
  return `${name}+0x${v.toString(16)}`;
}

/** A pointer field: its relocation's target, else the literal value. */
function pointerLabel(c: CheckedElf, r: Rela | undefined, literal: bigint): string {
  return r ? symLabel(c, c.symbols[r.sym], r.addend) : `0x${literal.toString(16)}`;
}

function flagString(s: Section): string {
  return `${(s.flags & SHF_ALLOC) !== 0n ? 'A' : ''}${(s.flags & SHF_WRITE) !== 0n ? 'W' : ''}${(s.flags & SHF_EXECINSTR) !== 0n ? 'X' : ''}`;
}

/** What `inspect` shows of a parsed payload. */
export function renderPayload(p: Payload): InspectedPayload {
  const { buildId, depends } = p.notes();
  const funcs: InspectedFunc[] = p.funcs().map((f) => ({
    name: f.name,
    oldAddr: pointerLabel(p, f.oldRel, f.oldAddr),
    newAddr: pointerLabel(p, f.newRel, f.newAddr),
    oldSize: f.oldSize,
    newSize: f.newSize,
    kind: f.isNop ? 'nop' : 'jump',
    version: f.version,
    expect: f.expect.enabled ? { enabled: true, len: f.expect.len, bytes: toHex(f.expect.data.subarray(0, Math.min(f.expect.len, MAX_OPAQUE))) } : null,
  }));
  const hooks = p.hooks().map((h) => ({ kind: h.kind, targets: h.slots.map((r) => (r ? symLabel(p, p.symbols[r.sym], r.addend) : '?')) }));
  const sections = p.elf.sections
    .filter((s) => s.index !== 0 && (s.flags & SHF_ALLOC) !== 0n)
    .map((s) => ({ name: s.name, size: Number(s.size), flags: flagString(s) }));
  return { buildId: buildId.hex, depends: depends.hex, baseBuildId: p.baseBuildId().hex, funcs, hooks, metadata: p.metadata(), sections };
}

/** Parse, statically check and render a payload file. Throws HotstackError on anything invalid. */
export function inspectPayload(bytes: Uint8Array): InspectedPayload {
  return renderPayload(parsePayload(bytes));
}
