/**
 * Tiny relocatable objects holding one allocated, read-only data section
 * and nothing else: the build-id notes `.livepatch.depends` and
 * `.livepatch.xen_depends`, and `.modinfo`. They are what Xen's recipe
 * makes with `objcopy -I binary ... --rename-section .data=NAME,alloc,load,
 * readonly,data,contents -S`, written directly: no `_binary_*` symbols
 * (which every payload would export: EEXIST), and the build-id is taken
 * from wherever findBuildId found it, not only a `.note.gnu.build-id`
 * section.
 */
import { EHDR_SIZE, EM_X86_64, ET_REL, EV_CURRENT, NT_GNU_BUILD_ID, SHDR_SIZE, SHF_ALLOC, SHT_PROGBITS, SHT_STRTAB, SHT_SYMTAB, SYM_SIZE, STB_LOCAL, STT_SECTION, alignUp } from '../elf/index.js';

/** One ELF note `GNU` / NT_GNU_BUILD_ID holding `buildId`. */
export function buildIdNote(buildId: Uint8Array): Uint8Array {
  const desc = alignUp(buildId.length, 4);
  const out = new Uint8Array(12 + 4 + desc);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, 4, true);
  dv.setUint32(4, buildId.length, true);
  dv.setUint32(8, NT_GNU_BUILD_ID, true);
  out.set([0x47, 0x4e, 0x55, 0], 12);
  out.set(buildId, 16);
  return out;
}

/** `.modinfo` contents: each string NUL-terminated. */
export function modinfoBytes(entries: readonly string[]): Uint8Array {
  return new Uint8Array(Buffer.from(entries.map((e) => e + '\0').join(''), 'utf8'));
}

/** The ELF header of an x86-64 ET_REL file whose `shnum` section headers start at `shoff`. */
export function writeRelHeader(out: Uint8Array, shoff: number, shnum: number, shstrndx: number): void {
  const dv = new DataView(out.buffer, out.byteOffset, out.byteLength);
  out.set([0x7f, 0x45, 0x4c, 0x46, 2 /* ELFCLASS64 */, 1 /* LSB */, EV_CURRENT, 0 /* OSABI none */], 0);
  dv.setUint16(16, ET_REL, true);
  dv.setUint16(18, EM_X86_64, true);
  dv.setUint32(20, EV_CURRENT, true);
  dv.setBigUint64(40, BigInt(shoff), true);
  dv.setUint16(52, EHDR_SIZE, true);
  dv.setUint16(58, SHDR_SIZE, true);
  dv.setUint16(60, shnum, true);
  dv.setUint16(62, shstrndx, true);
}

/** An ET_REL x86-64 object whose only content section is `name` (SHF_ALLOC, PROGBITS) holding `data`. */
export function sectionObject(name: string, data: Uint8Array, align: number): Uint8Array {
  const shstr = Buffer.from(`\0${name}\0.symtab\0.strtab\0.shstrtab\0`, 'latin1');
  const nameOff = 1;
  const symtabName = nameOff + Buffer.byteLength(name, 'latin1') + 1;
  const strtabName = symtabName + '.symtab'.length + 1;
  const shstrName = strtabName + '.strtab'.length + 1;

  const dataOff = alignUp(EHDR_SIZE, Math.max(align, 1));
  const symOff = alignUp(dataOff + data.length, 8);
  const symSize = 2 * SYM_SIZE; // the null symbol and the section symbol
  const strOff = symOff + symSize;
  const strSize = 1;
  const shstrOff = strOff + strSize;
  const shOff = alignUp(shstrOff + shstr.length, 8);
  const shnum = 5;
  const out = new Uint8Array(shOff + shnum * SHDR_SIZE);
  const dv = new DataView(out.buffer);

  writeRelHeader(out, shOff, shnum, 4);

  out.set(data, dataOff);
  // Symbol 1: the section symbol of section 1 (local); symbol 0 stays zero.
  out[symOff + SYM_SIZE + 4] = (STB_LOCAL << 4) | STT_SECTION;
  dv.setUint16(symOff + SYM_SIZE + 6, 1, true);
  out.set(shstr, shstrOff);

  const sh = (i: number, f: { name: number; type: number; flags?: bigint; off: number; size: number; link?: number; info?: number; align: number; entsize?: number }): void => {
    const o = shOff + i * SHDR_SIZE;
    dv.setUint32(o, f.name, true);
    dv.setUint32(o + 4, f.type, true);
    dv.setBigUint64(o + 8, f.flags ?? 0n, true);
    dv.setBigUint64(o + 24, BigInt(f.off), true);
    dv.setBigUint64(o + 32, BigInt(f.size), true);
    dv.setUint32(o + 40, f.link ?? 0, true);
    dv.setUint32(o + 44, f.info ?? 0, true);
    dv.setBigUint64(o + 48, BigInt(f.align), true);
    dv.setBigUint64(o + 56, BigInt(f.entsize ?? 0), true);
  };
  sh(1, { name: nameOff, type: SHT_PROGBITS, flags: SHF_ALLOC, off: dataOff, size: data.length, align: Math.max(align, 1) });
  sh(2, { name: symtabName, type: SHT_SYMTAB, off: symOff, size: symSize, link: 3, info: 2, align: 8, entsize: SYM_SIZE });
  sh(3, { name: strtabName, type: SHT_STRTAB, off: strOff, size: strSize, align: 1 });
  sh(4, { name: shstrName, type: SHT_STRTAB, off: shstrOff, size: shstr.length, align: 1 });
  return out;
}
