/**
 * x86-64 RELA relocation arithmetic. The caller supplies S (symbol value),
 * A (addend), P (place) and, for GOT-relative types, G (the GOT slot
 * address); this module checks the field and writes it.
 */
import { fail } from '../../errors.js';
import { R_X86_64, R_X86_64_TLS, RELOC_NAMES } from '../../elf/constants.js';
import type { RelocKind } from '../arch.js';
import { fitsI32 } from './insn.js';

/** How each supported type is computed. Unsupported types are absent. */
export const RELOC_KIND: Record<number, RelocKind> = {
  [R_X86_64.NONE]: 'none',
  [R_X86_64['64']]: 'abs64',
  [R_X86_64['32']]: 'abs32',
  [R_X86_64['32S']]: 'abs32s',
  [R_X86_64.PC32]: 'pc32',
  [R_X86_64.PLT32]: 'plt32',
  [R_X86_64.PC64]: 'pc64',
  [R_X86_64.GOTPCREL]: 'gotpc32',
  [R_X86_64.GOTPCRELX]: 'gotpc32',
  [R_X86_64.REX_GOTPCRELX]: 'gotpc32',
};

/** Bytes a relocation type writes. */
export function relocWidth(kind: RelocKind): number {
  switch (kind) {
    case 'none':
      return 0;
    case 'abs64':
    case 'pc64':
      return 8;
    default:
      return 4;
  }
}

export function relocName(type: number): string {
  return RELOC_NAMES[type] ?? `type ${type}`;
}

const TLS_TYPES = new Set<number>(Object.values(R_X86_64_TLS));

export function isTlsReloc(type: number): boolean {
  return TLS_TYPES.has(type);
}

/**
 * Compute and store one relocation into `buf` at `off`. `value` is S+A for
 * absolute kinds, already including G for GOT kinds; `place` is P.
 * Overflow is EOVERFLOW naming the relocation.
 */
export function writeReloc(buf: Uint8Array, off: number, kind: RelocKind, value: bigint, place: bigint, what: string): void {
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  switch (kind) {
    case 'none':
      return;
    case 'abs64':
      dv.setBigUint64(off, BigInt.asUintN(64, value), true);
      return;
    case 'pc64':
      dv.setBigUint64(off, BigInt.asUintN(64, value - place), true);
      return;
    case 'abs32': {
      const v = BigInt.asUintN(64, value);
      if (v > 0xffffffffn) fail('EOVERFLOW', `${what}: value 0x${v.toString(16)} does not fit an unsigned 32-bit field`);
      dv.setUint32(off, Number(v), true);
      return;
    }
    case 'abs32s': {
      const v = BigInt.asIntN(64, value);
      if (!fitsI32(v)) fail('EOVERFLOW', `${what}: value 0x${BigInt.asUintN(64, v).toString(16)} does not fit a signed 32-bit field`);
      dv.setInt32(off, Number(v), true);
      return;
    }
    case 'pc32':
    case 'plt32':
    case 'gotpc32': {
      const d = BigInt.asIntN(64, value - place);
      if (!fitsI32(d)) {
        fail('EOVERFLOW', `${what}: target 0x${BigInt.asUintN(64, value).toString(16)} is ${d} bytes away from 0x${place.toString(16)}, beyond a 32-bit displacement`);
      }
      dv.setInt32(off, Number(d), true);
      return;
    }
  }
}
