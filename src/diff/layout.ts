/**
 * Same code, other layout. The assembler does not always lay a function
 * out the same way when it sits in its own section (-ffunction-sections,
 * as ORIG.o is built) and when it shares `.text` with its neighbours (as
 * most programs are built): jump relaxation picks a 2- or 5-byte jump, and
 * alignment padding follows. Those are the only differences accepted here:
 * the two instruction streams, without NOPs, must be the same instructions,
 * jumps inside the function must go to the same instruction, and
 * instructions ORIG.o relocates must have the same length and mnemonic (the
 * linker may turn a GOT load into a `lea`).
 */
import type { Rela } from '../elf/index.js';
import { loadIced } from '../analysis/iced.js';
import { relocSpan } from './object.js';
import { R_X86_64 } from '../elf/index.js';

interface Insn {
  at: number;
  len: number;
  mnemonic: number;
  /** Target offset of a near branch, relative to the function start. */
  target: number | undefined;
  bytes: Uint8Array;
}

/** Decode `bytes` (a function at offset 0); undefined when something does not decode. */
function decode(bytes: Uint8Array): Insn[] | undefined {
  const iced = loadIced();
  const d = new iced.Decoder(64, bytes, iced.DecoderOptions.None);
  const out: Insn[] = [];
  try {
    d.ip = 0n;
    while (d.canDecode) {
      const ins = d.decode();
      try {
        if (ins.code === iced.Code.INVALID) return undefined;
        const fc = ins.flowControl;
        const branch = ins.op0Kind === iced.OpKind.NearBranch64
          && (fc === iced.FlowControl.Call || fc === iced.FlowControl.UnconditionalBranch || fc === iced.FlowControl.ConditionalBranch);
        if (ins.mnemonic === iced.Mnemonic.Nop) continue;
        const at = Number(ins.ip);
        out.push({ at, len: ins.length, mnemonic: ins.mnemonic, target: branch ? Number(BigInt.asIntN(64, ins.nearBranch64)) : undefined, bytes: bytes.subarray(at, at + ins.length) });
      } finally {
        ins.free();
      }
    }
  } finally {
    d.free();
  }
  return out;
}

/** Index of the first instruction at or after `offset`, or a marker for outside the function. */
function targetIndex(list: Insn[], offset: number, size: number): string {
  if (offset < 0 || offset >= size) return 'outside';
  const i = list.findIndex((x) => x.at >= offset);
  return i < 0 ? 'end' : String(i);
}

/** Whether `base` holds the same instructions as ORIG's `orig` (relocated by `relocs`), laid out perhaps differently. */
export function sameCode(orig: Uint8Array, relocs: readonly Rela[], base: Uint8Array): boolean {
  const a = decode(orig);
  const b = decode(base);
  if (!a || !b || a.length !== b.length) return false;
  const relaxable = new Set<number>([R_X86_64.GOTPCRELX, R_X86_64.REX_GOTPCRELX]);
  for (let i = 0; i < a.length; i++) {
    const x = a[i]!;
    const y = b[i]!;
    const rel = relocs.filter((r) => {
      const { before, width } = relocSpan(r.type);
      return Number(r.offset) + width > x.at && Number(r.offset) - before < x.at + x.len;
    });
    if (rel.length) {
      // Same instruction but for the fields the linker fills in (and the opcode of a relaxed GOT load).
      if (x.len !== y.len || (x.mnemonic !== y.mnemonic && !rel.some((r) => relaxable.has(r.type)))) return false;
      const keep = new Uint8Array(x.len).fill(1);
      for (const r of rel) {
        const { before, width } = relocSpan(r.type);
        keep.fill(0, Math.max(0, Number(r.offset) - before - x.at), Math.max(0, Number(r.offset) + width - x.at));
      }
      if (x.bytes.some((v, k) => keep[k] === 1 && v !== y.bytes[k])) return false;
      continue;
    }
    if (x.mnemonic !== y.mnemonic) return false;
    if (x.target !== undefined || y.target !== undefined) {
      if (x.target === undefined || y.target === undefined) return false;
      if (targetIndex(a, x.target, orig.length) !== targetIndex(b, y.target, base.length)) return false;
      continue;
    }
    if (x.len !== y.len || x.bytes.some((v, k) => v !== y.bytes[k])) return false;
  }
  return true;
}
