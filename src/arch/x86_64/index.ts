/** The x86-64 implementation of the arch seam: everything hotstack knows about x86. */
import type { Arch } from '../arch.js';
import { EM_X86_64 } from '../../elf/index.js';
import { ENDBR64_LEN, encodeJump, encodeNops, encodeVeneer, fitsI32, isEndbr64, JMP_LEN, jumpTarget, VENEER_LEN } from './insn.js';
import { encodePreservingVeneer, isPreservable } from './preserve.js';
import { isTlsReloc, RELOC_KIND, relocName, relocWidth, writeReloc } from './relocs.js';
import { x86_64Process } from './process.js';
import type { Regs } from './regs.js';

export const x86_64: Arch<Regs> = {
  machine: EM_X86_64,
  name: 'x86-64',
  jumpLen: JMP_LEN,
  landingPad: { name: 'endbr64', length: ENDBR64_LEN },
  // CET: indirect calls must still land on the endbr64, so the jump goes after it.
  patchOffset: (code) => (isEndbr64(code) ? ENDBR64_LEN : 0),
  branchReaches: fitsI32,
  encodeJump,
  jumpTarget,
  encodeNops,
  veneerLen: VENEER_LEN,
  encodeVeneer,
  canKeep: isPreservable,
  keptName: (r) => (r.width > 16 ? `${r.width === 32 ? 'y' : 'z'}${r.name.slice(1)}` : r.name),
  encodePreservingVeneer,
  relocKind: (type) => RELOC_KIND[type],
  relocWidth,
  relocName,
  isTlsReloc,
  writeReloc,
  process: x86_64Process,
};
