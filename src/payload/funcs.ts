/** struct livepatch_func (104 bytes, little-endian): decoding only. */
import { fail } from '../errors.js';
import type { Section } from '../elf/index.js';
import { FUNC_SIZE } from './sections.js';

export interface Expectation {
  enabled: boolean;
  /** 5-bit length. */
  len: number;
  /** Reserved bits 6-7, must be 0. */
  rsv: number;
  data: Uint8Array;
}

export interface FuncRecordRaw {
  /** Index in .livepatch.funcs. */
  index: number;
  namePtr: bigint;
  newAddr: bigint;
  oldAddr: bigint;
  newSize: number;
  oldSize: number;
  version: number;
  expect: Expectation;
}

/** Field offsets in struct livepatch_func. */
export const FUNC_OFFSETS = { name: 0, newAddr: 8, oldAddr: 16, newSize: 24, oldSize: 28, version: 32, opaque: 33, expect: 72, expectData: 73 } as const;

/** The records of a .livepatch.funcs section fill it exactly (EINVAL at its header otherwise). */
export function checkFuncsSize(sec: Section): void {
  if (sec.size % BigInt(FUNC_SIZE) !== 0n) {
    fail('EINVAL', `.livepatch.funcs is ${sec.size} bytes, not a multiple of ${FUNC_SIZE}: records must be struct livepatch_func (include hotstack.h)`, sec.headerOffset);
  }
}

/** Decode the whole records of a .livepatch.funcs section (checkFuncsSize refuses a partial one). */
export function decodeFuncs(data: Uint8Array): FuncRecordRaw[] {
  const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const out: FuncRecordRaw[] = [];
  for (let i = 0; (i + 1) * FUNC_SIZE <= data.length; i++) {
    const o = i * FUNC_SIZE;
    const e = dv.getUint8(o + FUNC_OFFSETS.expect);
    out.push({
      index: i,
      namePtr: dv.getBigUint64(o + FUNC_OFFSETS.name, true),
      newAddr: dv.getBigUint64(o + FUNC_OFFSETS.newAddr, true),
      oldAddr: dv.getBigUint64(o + FUNC_OFFSETS.oldAddr, true),
      newSize: dv.getUint32(o + FUNC_OFFSETS.newSize, true),
      oldSize: dv.getUint32(o + FUNC_OFFSETS.oldSize, true),
      version: dv.getUint8(o + FUNC_OFFSETS.version),
      expect: {
        enabled: (e & 1) === 1,
        len: (e >> 1) & 0x1f,
        rsv: e >> 6,
        data: data.slice(o + FUNC_OFFSETS.expectData, o + FUNC_SIZE),
      },
    });
  }
  return out;
}
