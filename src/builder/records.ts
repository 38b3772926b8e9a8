/**
 * The `struct livepatch_func` records of a combined (ld -r) object, as
 * HOTSTACK_PATCH / HOTSTACK_NOP declare them: the name of the function to
 * patch (a relocated pointer into a string section) and the replacement
 * (a relocated pointer to a function of the payload, or 0 for a NOP).
 * new_size, old_size and the expectation are not relocated, so `hotstack
 * build` writes them straight into the section's bytes.
 */
import { fail } from '../errors.js';
import {
  cString, readSymbols, relocationsFor, SHN_UNDEF, SHT_NOBITS, SHT_SYMTAB, STT_FUNC, STT_GNU_IFUNC, STT_SECTION,
  type ElfFile, type ElfSymbol,
} from '../elf/index.js';
import { checkFuncsSize, decodeFuncs, FUNC_OFFSETS } from '../payload/funcs.js';
import { FUNC_SIZE, HOOK_NAMES, HOOK_SECTIONS, PAYLOAD_VERSION, SEC, type HookName } from '../payload/sections.js';

export interface DeclaredFunc {
  index: number;
  /** File offset of the record in the combined object. */
  fileOffset: number;
  /** Name of the function to patch (looked up in the base). */
  name: string;
  kind: 'jump' | 'nop';
  /** Jump: size of the replacement; NOP: bytes to NOP (from the macro). */
  newSize: number;
  /** Jump: the replacement's symbol (or section) name. */
  newFunction: string | null;
  /** Whether the record carries a literal or relocated old_addr (not 0). */
  hasOldAddr: boolean;
}

export interface Declared {
  funcs: DeclaredFunc[];
  hooks: { kind: HookName; count: number }[];
}

function symbolsOf(elf: ElfFile): ElfSymbol[] {
  const tab = elf.sections.find((s) => s.type === SHT_SYMTAB);
  return tab ? readSymbols(elf, tab) : [];
}

/** The size of the function a relocation (symbol + addend) points at, and its name. */
function functionAt(elf: ElfFile, syms: ElfSymbol[], sym: ElfSymbol, addend: bigint): { size: number; label: string } | undefined {
  const isFunc = (s: ElfSymbol): boolean => (s.type === STT_FUNC || s.type === STT_GNU_IFUNC) && s.size > 0n;
  if (addend === 0n && isFunc(sym)) return { size: Number(sym.size), label: sym.name };
  // Section symbol + offset (static functions): the function symbol at that place.
  const at = sym.value + addend;
  const named = syms.find((s) => s.shndx === sym.shndx && s.value === at && isFunc(s) && s.name);
  if (named) return { size: Number(named.size), label: named.name };
  const sec = elf.sections[sym.shndx];
  if (sym.type === STT_SECTION && at === 0n && sec && sec.size > 0n) return { size: Number(sec.size), label: sec.name };
  return undefined;
}

/** Read what the sources declare. Throws EINVAL for records hotstack build cannot fill in. */
export function readDeclared(elf: ElfFile): Declared {
  const syms = symbolsOf(elf);
  const funcs: DeclaredFunc[] = [];
  const fsecs = elf.sectionsNamed(SEC.funcs);
  if (fsecs.length > 1) fail('EINVAL', `${SEC.funcs} appears ${fsecs.length} times in the linked sources`);
  const fsec = fsecs[0];
  if (fsec && fsec.size > 0n) {
    if (fsec.type === SHT_NOBITS) fail('EINVAL', `${SEC.funcs} has no contents (NOBITS): declare records with HOTSTACK_PATCH / HOTSTACK_NOP`);
    checkFuncsSize(fsec);
    const rm = relocationsFor(elf, fsec.index);
    for (const f of decodeFuncs(elf.data(fsec))) {
      const base = f.index * FUNC_SIZE;
      const where = `${SEC.funcs} record ${f.index}`;
      const nameRel = rm.get(base + FUNC_OFFSETS.name);
      if (!nameRel) fail('EINVAL', `${where} has no name: use HOTSTACK_PATCH(function, replacement) or HOTSTACK_NOP(function, n)`);
      const nsym = syms[nameRel.sym];
      if (!nsym || nsym.shndx === SHN_UNDEF || nsym.shndx >= elf.sections.length) fail('EINVAL', `${where}: its name is not a string of the payload`);
      const nsec = elf.sections[nsym.shndx]!;
      const name = cString(elf.data(nsec), Number(nsym.value + nameRel.addend), `${where} name`);
      if (!name) fail('EINVAL', `${where}: the name of the function to patch is empty`);
      if (f.version !== PAYLOAD_VERSION) fail('EOPNOTSUPP', `${name}: livepatch_func version ${f.version}; only ${PAYLOAD_VERSION} is supported (use HOTSTACK_PATCH)`);
      const newRel = rm.get(base + FUNC_OFFSETS.newAddr);
      const hasOldAddr = f.oldAddr !== 0n || rm.has(base + FUNC_OFFSETS.oldAddr);
      const fileOffset = Number(fsec.offset) + base;
      if (!newRel) {
        if (f.newAddr !== 0n) fail('EINVAL', `${name}: the replacement is a literal address (0x${f.newAddr.toString(16)}); give a function of the payload`);
        funcs.push({ index: f.index, fileOffset, name, kind: 'nop', newSize: f.newSize, newFunction: null, hasOldAddr });
        continue;
      }
      const rsym = syms[newRel.sym];
      if (!rsym) fail('EINVAL', `${name}: the replacement's relocation names symbol ${newRel.sym}, which does not exist`);
      if (rsym.shndx === SHN_UNDEF) {
        fail('EINVAL', `${name}: the replacement ${rsym.name || '?'} is not defined in the payload's sources; it must be a function compiled into the payload`);
      }
      const fn = functionAt(elf, syms, rsym, newRel.addend);
      if (!fn) {
        const label = rsym.name || elf.sections[rsym.shndx]?.name || '?';
        fail('EINVAL', `${name}: cannot tell the size of the replacement (${label}${newRel.addend ? `+${newRel.addend}` : ''}); it must be a function of the payload`);
      }
      funcs.push({ index: f.index, fileOffset, name, kind: 'jump', newSize: fn.size, newFunction: fn.label, hasOldAddr });
    }
  }
  const seen = new Map<string, number>();
  for (const f of funcs) {
    if (seen.has(f.name)) fail('EINVAL', `${f.name} is declared twice (records ${seen.get(f.name)} and ${f.index}): one payload patches a function once`);
    seen.set(f.name, f.index);
  }
  const hooks: Declared['hooks'] = [];
  for (const k of HOOK_NAMES) {
    const s = elf.section(HOOK_SECTIONS[k].name);
    if (s && s.size > 0n) hooks.push({ kind: k, count: Number(s.size / 8n) });
  }
  return { funcs, hooks };
}

/** The fields `hotstack build` fills in one record. */
export interface RecordFill {
  fileOffset: number;
  newSize: number;
  oldSize: number;
  /** Expectation bytes (length 1..31), or null to leave it as declared. */
  expect: Uint8Array | null;
}

/** Write new_size, old_size and the expectation into the object's bytes. */
export function fillRecords(bytes: Uint8Array, fills: readonly RecordFill[]): void {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (const f of fills) {
    dv.setUint32(f.fileOffset + FUNC_OFFSETS.newSize, f.newSize, true);
    dv.setUint32(f.fileOffset + FUNC_OFFSETS.oldSize, f.oldSize, true);
    if (f.expect) {
      const len = f.expect.length;
      bytes[f.fileOffset + FUNC_OFFSETS.expect] = 1 | (len << 1);
      bytes.fill(0, f.fileOffset + FUNC_OFFSETS.expectData, f.fileOffset + FUNC_SIZE);
      bytes.set(f.expect, f.fileOffset + FUNC_OFFSETS.expectData);
    }
  }
}
