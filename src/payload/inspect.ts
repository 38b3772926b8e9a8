/**
 * Static view of a payload file, without a base: what `hotstack inspect`
 * shows. Runs every check that needs no target (ELF structure, notes,
 * patching sections, record sizes and versions, hook sizes, .modinfo);
 * the rules that need a base (symbol resolution, distances, EEXIST) are
 * left to `check` and `upload`.
 */
import { fail } from '../errors.js';
import {
  cString, parseBuildIdNote, relocationsFor, SHF_ALLOC, SHF_EXECINSTR, SHF_WRITE, SHN_UNDEF, SHT_NOBITS, toHex,
  type ElfSymbol, type Rela, type Section,
} from '../elf/index.js';
import { checkPayloadElf, type CheckedElf } from './elf-checks.js';
import { checkRelocations, checkSymbols, checkXenOnlySections } from './structure.js';
import { decodeFuncs, FUNC_OFFSETS } from './funcs.js';
import { FUNC_SIZE, HOOK_SECTIONS, MAX_OPAQUE, PATCHING_SECTIONS, PAYLOAD_VERSION, SEC, type HookName } from './sections.js';

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

function symLabel(c: CheckedElf, sym: ElfSymbol | undefined, addend: bigint): string {
  if (!sym) return '?';
  if (!sym.name && sym.shndx !== SHN_UNDEF) {
    // A section symbol plus offset: name the function or object defined there.
    const at = sym.value + addend;
    const named = c.symbols.find((s) => s.shndx === sym.shndx && s.name && s.value === at && (s.type === 1 || s.type === 2));
    if (named) return named.name;
  }
  let name = sym.name;
  if (!name) name = c.elf.sections[sym.shndx]?.name ?? `sym[${sym.index}]`;
  const v = sym.shndx === SHN_UNDEF ? addend : sym.value + addend;
  if (sym.shndx === SHN_UNDEF || sym.name) return addend ? `${name}${addend > 0 ? '+' : ''}${addend}` : name;
  return `${name}+0x${v.toString(16)}`;
}

/** The string a relocated pointer field points at, when it points into a payload section. */
function stringAt(c: CheckedElf, r: Rela | undefined): string | undefined {
  if (!r) return undefined;
  const sym = c.symbols[r.sym];
  if (!sym || sym.shndx === SHN_UNDEF || sym.shndx >= c.elf.sections.length) return undefined;
  const sec = c.elf.sections[sym.shndx]!;
  if (sec.type === SHT_NOBITS) return undefined;
  const data = c.elf.data(sec);
  const off = Number(sym.value + r.addend);
  try {
    return cString(data, off, 'function name');
  } catch {
    return undefined;
  }
}

function note(c: CheckedElf, name: string, required: boolean): string | null {
  const secs = c.elf.sectionsNamed(name);
  if (secs.length === 0) {
    if (required) fail('EINVAL', `${name} is missing`);
    return null;
  }
  if (secs.length > 1) fail('EINVAL', `${name} appears ${secs.length} times`);
  const s = secs[0]!;
  if (s.size === 0n) fail('EINVAL', `${name} is empty`);
  return toHex(parseBuildIdNote(c.elf.data(s), name, Number(s.offset)));
}

function flagString(s: Section): string {
  return `${(s.flags & SHF_ALLOC) !== 0n ? 'A' : ''}${(s.flags & SHF_WRITE) !== 0n ? 'W' : ''}${(s.flags & SHF_EXECINSTR) !== 0n ? 'X' : ''}`;
}

/** Parse and statically check a payload file. Throws HotstackError on anything invalid. */
export function inspectPayload(bytes: Uint8Array): InspectedPayload {
  const c = checkPayloadElf(bytes);
  checkSymbols(c);
  checkRelocations(c);
  checkXenOnlySections(c);
  const buildId = note(c, SEC.buildId, true)!;
  const depends = note(c, SEC.depends, true)!;
  const baseBuildId = note(c, SEC.xenDepends, true);
  if (!PATCHING_SECTIONS.some((n) => c.elf.section(n))) fail('EINVAL', 'nothing to patch: no .livepatch.funcs and no hook section');
  for (const n of PATCHING_SECTIONS) {
    const secs = c.elf.sectionsNamed(n);
    if (secs.length > 1) fail('EINVAL', `${n} appears ${secs.length} times`);
    if (secs[0] && secs[0].size === 0n) fail('EINVAL', `${n} is empty`);
  }
  const funcs: InspectedFunc[] = [];
  const fsec = c.elf.section(SEC.funcs);
  if (fsec) {
    if (fsec.size % BigInt(FUNC_SIZE) !== 0n) fail('EINVAL', `.livepatch.funcs is ${fsec.size} bytes, not a multiple of ${FUNC_SIZE}`);
    const rm = relocationsFor(c.elf, fsec.index);
    for (const f of decodeFuncs(c.elf.data(fsec))) {
      const base = f.index * FUNC_SIZE;
      const nameRel = rm.get(base + FUNC_OFFSETS.name);
      const name = stringAt(c, nameRel) ?? (f.namePtr ? `0x${f.namePtr.toString(16)}` : `funcs[${f.index}]`);
      if (f.version !== PAYLOAD_VERSION) fail('EOPNOTSUPP', `function ${name}: livepatch_func version ${f.version}, only ${PAYLOAD_VERSION} is supported`);
      if (f.oldSize === 0) fail('EINVAL', `function ${name}: old_size is 0`);
      const newRel = rm.get(base + FUNC_OFFSETS.newAddr);
      const oldRel = rm.get(base + FUNC_OFFSETS.oldAddr);
      const isNop = !newRel && f.newAddr === 0n;
      if (isNop && f.newSize > MAX_OPAQUE) fail('EOPNOTSUPP', `function ${name}: NOP patch of ${f.newSize} bytes; at most ${MAX_OPAQUE}`);
      funcs.push({
        name,
        oldAddr: oldRel ? symLabel(c, c.symbols[oldRel.sym], oldRel.addend) : `0x${f.oldAddr.toString(16)}`,
        newAddr: newRel ? symLabel(c, c.symbols[newRel.sym], newRel.addend) : `0x${f.newAddr.toString(16)}`,
        oldSize: f.oldSize,
        newSize: f.newSize,
        kind: isNop ? 'nop' : 'jump',
        version: f.version,
        expect: f.expect.enabled ? { enabled: true, len: f.expect.len, bytes: toHex(f.expect.data.subarray(0, Math.min(f.expect.len, MAX_OPAQUE))) } : null,
      });
    }
  }
  const hooks: InspectedPayload['hooks'] = [];
  for (const [k, h] of Object.entries(HOOK_SECTIONS) as [HookName, (typeof HOOK_SECTIONS)[HookName]][]) {
    const s = c.elf.section(h.name);
    if (!s) continue;
    if (s.size % 8n !== 0n || (!h.multi && s.size !== 8n)) fail('EINVAL', `${h.name} is ${s.size} bytes; it must hold ${h.multi ? 'a whole number of' : 'exactly one'} 8-byte pointer${h.multi ? 's' : ''}`);
    const rm = relocationsFor(c.elf, s.index);
    const targets: string[] = [];
    for (let o = 0; o < Number(s.size); o += 8) {
      const r = rm.get(o);
      targets.push(r ? symLabel(c, c.symbols[r.sym], r.addend) : '?');
    }
    hooks.push({ kind: k, targets });
  }
  const metadata: string[] = [];
  const mi = c.elf.section(SEC.modinfo);
  if (mi && mi.size > 0n) {
    const d = c.elf.data(mi);
    if (d[d.length - 1] !== 0) fail('EINVAL', '.modinfo does not end with a NUL byte');
    for (let o = 0; o < d.length; ) {
      const str = cString(d, o, '.modinfo');
      if (str) metadata.push(str);
      o += str.length + 1;
    }
  }
  const sections = c.elf.sections
    .filter((s) => s.index !== 0 && (s.flags & SHF_ALLOC) !== 0n)
    .map((s) => ({ name: s.name, size: Number(s.size), flags: flagString(s) }));
  return { buildId, depends, baseBuildId, funcs, hooks, metadata, sections };
}
