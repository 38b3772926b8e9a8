/**
 * x86-64 patch encodings: the 5-byte relative jump, canonical multi-byte
 * NOPs, and endbr64 detection (a jump goes after it so CET-enabled
 * indirect calls still land on an endbr64).
 */

/** `jmp rel32` length. */
export const JMP_LEN = 5;
export const ENDBR64_LEN = 4;

/** True when `code` starts with endbr64. */
export function isEndbr64(code: Uint8Array): boolean {
  return code.length >= 4 && code[0] === 0xf3 && code[1] === 0x0f && code[2] === 0x1e && code[3] === 0xfa;
}

/** Whether a displacement fits a signed 32-bit field. */
export function fitsI32(v: bigint): boolean {
  return v >= -0x80000000n && v <= 0x7fffffffn;
}

/** `e9 rel32` from `from` (the address of the jump) to `to`. Caller checks the distance. */
export function encodeJump(from: bigint, to: bigint): Uint8Array {
  const rel = to - (from + BigInt(JMP_LEN));
  const out = new Uint8Array(JMP_LEN);
  out[0] = 0xe9;
  new DataView(out.buffer).setInt32(1, Number(BigInt.asIntN(32, rel)), true);
  return out;
}

/** Where the `e9 rel32` at `from` goes, or undefined when `bytes` are not one. */
export function jumpTarget(from: bigint, bytes: Uint8Array): bigint | undefined {
  if (bytes.length !== JMP_LEN || bytes[0] !== 0xe9) return undefined;
  return from + BigInt(JMP_LEN) + BigInt(new DataView(bytes.buffer, bytes.byteOffset, JMP_LEN).getInt32(1, true));
}

/** The recommended multi-byte NOPs (Intel SDM), 1 to 9 bytes. */
const NOPS: number[][] = [
  [0x90],
  [0x66, 0x90],
  [0x0f, 0x1f, 0x00],
  [0x0f, 0x1f, 0x40, 0x00],
  [0x0f, 0x1f, 0x44, 0x00, 0x00],
  [0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00],
  [0x0f, 0x1f, 0x80, 0x00, 0x00, 0x00, 0x00],
  [0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00],
  [0x66, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00],
];

/** `len` bytes of NOPs, using the longest canonical NOPs first. */
export function encodeNops(len: number): Uint8Array {
  const out = new Uint8Array(len);
  let o = 0;
  while (o < len) {
    const n = Math.min(NOPS.length, len - o);
    out.set(NOPS[n - 1]!, o);
    o += n;
  }
  return out;
}

/** A veneer: `jmp *0(%rip)` then the 8-byte absolute target (14 bytes). */
export const VENEER_LEN = 14;
export function encodeVeneer(target: bigint): Uint8Array {
  const out = new Uint8Array(VENEER_LEN);
  out.set([0xff, 0x25, 0, 0, 0, 0], 0);
  new DataView(out.buffer).setBigUint64(6, BigInt.asUintN(64, target), true);
  return out;
}

/** Breakpoint byte, used as the return trap of remote calls. */
export const INT3 = 0xcc;
