/** RELA relocation entries. */
import { fail } from '../errors.js';
import { RELA_SIZE, SHT_RELA } from './constants.js';
import type { ElfFile, Section } from './file.js';

export interface Rela {
  /** Offset inside the target section. */
  offset: bigint;
  type: number;
  sym: number;
  addend: bigint;
  /** File offset of the entry, for error messages. */
  at: number;
}

/** Parse a SHT_RELA section (entsize must be 24: EINVAL otherwise). */
export function readRelas(elf: ElfFile, sec: Section): Rela[] {
  if (sec.entsize !== BigInt(RELA_SIZE) || sec.size % BigInt(RELA_SIZE) !== 0n) {
    fail('EINVAL', `relocation section [${sec.index}] ${sec.name} has entry size ${sec.entsize} (size ${sec.size}), expected ${RELA_SIZE}`, sec.headerOffset);
  }
  const data = elf.data(sec);
  const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const out: Rela[] = [];
  for (let o = 0; o < data.length; o += RELA_SIZE) {
    const info = dv.getBigUint64(o + 8, true);
    out.push({
      offset: dv.getBigUint64(o, true),
      sym: Number(info >> 32n),
      type: Number(info & 0xffffffffn),
      addend: dv.getBigInt64(o + 16, true),
      at: Number(sec.offset) + o,
    });
  }
  return out;
}

/** The RELA entries that apply to section `index`, keyed by offset (later entries win). */
export function relocationsFor(elf: ElfFile, index: number): Map<number, Rela> {
  const m = new Map<number, Rela>();
  for (const r of elf.sections) {
    if (r.type !== SHT_RELA || r.info !== index) continue;
    for (const e of readRelas(elf, r)) m.set(Number(e.offset), e);
  }
  return m;
}
