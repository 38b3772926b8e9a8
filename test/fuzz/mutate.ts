/**
 * Structural mutations of real payloads for the fuzzer (run.ts): every
 * field that means something to a loader, found with the tests' own ELF
 * reader (test/helpers/elfedit.ts, independent of src/elf):
 *
 * - ELF header fields;
 * - every section header's name, type, flags, offset, size, link, info,
 *   addralign, entsize;
 * - every symbol's name, info, other, shndx, value, size;
 * - every relocation's offset, symbol, type, addend;
 * - every note's namesz, descsz, type and first descriptor word (the three
 *   build-id notes and a signature note);
 * - every livepatch_func record's pointers, sizes, version, expectation.
 *
 * A case is a pure function of (seed, index): the same seed replays the
 * same inputs, and `--case I` reruns one of them alone.
 */
import { EHDR, FUNC, PayloadElf, RELA, SHDR, SHT, SYM, SYM_SIZE } from '../helpers/elfedit.js';

export type Width = 1 | 2 | 4 | 8;

export interface Field {
  off: number;
  width: Width;
  /** What the field is, for reports: "shdr[19] .livepatch.funcs size". */
  label: string;
  /** Values worth trying for this kind of field, besides the generic ones. */
  special?: bigint[];
}

export type Mutation =
  | { kind: 'write'; off: number; width: Width; value: bigint; label: string }
  | { kind: 'flip'; pos: number; bit: number }
  | { kind: 'truncate'; len: number };

const GiB = 1n << 30n;
const TiB = 1n << 40n;

/** Values that break bounds checks: zero, one-off sizes, powers of two, huge sizes (1 GiB - 1 TiB), all-ones. */
export const INTERESTING: bigint[] = [
  0n, 1n, 2n, 3n, 4n, 7n, 8n, 9n, 12n, 16n, 20n, 24n, 31n, 32n, 63n, 64n, 104n, 105n, 0xffn, 0x100n, 0xfffn, 0x1000n,
  0xff00n, 0xfff1n, 0xfff2n, 0xffffn, 0x200000n, 0x200001n, 0x4000000n, GiB, 4n * GiB - 1n, 0x7fffffffn, 0x80000000n, 0xffffffffn,
  1n << 32n, TiB, TiB + 104n, 1n << 62n, 1n << 63n, (1n << 64n) - 1n, (1n << 64n) - 24n, (1n << 64n) - 104n,
];

const SHT_VALUES = [0n, 1n, 2n, 3n, 4n, 5n, 6n, 7n, 8n, 9n, 10n, 11n, 14n, 15n, 16n, 17n, 18n, 19n, 0x6ffffff6n, 0x6fffffffn, 0x70000001n, 0xffffffffn];
const FLAG_VALUES = [0n, 1n, 2n, 3n, 4n, 6n, 7n, 0x10n, 0x20n, 0x32n, 0x40n, 0x200n, 0x400n, 0x800n, 0x80000000n, (1n << 64n) - 1n];

const NOTE_SECTIONS = ['.note.gnu.build-id', '.livepatch.depends', '.livepatch.xen_depends', '.note.hotstack.sig'];

/** Every field of `p` worth corrupting. */
export function fieldsOf(p: PayloadElf): Field[] {
  const out: Field[] = [];
  const ehdr: [keyof typeof EHDR, Width][] = [
    ['class', 1], ['data', 1], ['identVersion', 1], ['osabi', 1], ['abiversion', 1], ['type', 2], ['machine', 2], ['version', 4],
    ['phoff', 8], ['shoff', 8], ['phnum', 2], ['shentsize', 2], ['shnum', 2], ['shstrndx', 2],
  ];
  for (const [f, w] of ehdr) out.push({ off: EHDR[f], width: w, label: `ehdr ${f}` });
  const shdr: [keyof typeof SHDR, Width, bigint[]?][] = [
    ['name', 4], ['type', 4, SHT_VALUES], ['flags', 8, FLAG_VALUES], ['offset', 8], ['size', 8], ['link', 4], ['info', 4],
    ['addralign', 8], ['entsize', 8],
  ];
  const idx = (n: number) => [0n, 1n, BigInt(n - 1), BigInt(n), BigInt(n + 1), 0xfff1n, 0xfff2n, 0xffffn];
  for (const s of p.sections) {
    for (const [f, w, sp] of shdr) {
      const special = f === 'link' || f === 'info' ? idx(p.shnum) : f === 'size' || f === 'offset' ? [BigInt(s.size) + 1n, BigInt(s.size) - 1n, BigInt(p.bytes.length), BigInt(s.offset + 1)] : sp;
      out.push({ off: s.hdr + SHDR[f], width: w, label: `shdr[${s.index}] ${s.name} ${f}`, special });
    }
  }
  for (let i = 0; i < p.symtab.size / SYM_SIZE; i++) {
    const at = p.symtab.offset + i * SYM_SIZE;
    const sym = p.symbols[i]!;
    const lbl = `sym[${i}] ${sym.name || '-'}`;
    out.push(
      { off: at + SYM.name, width: 4, label: `${lbl} name` },
      { off: at + SYM.info, width: 1, label: `${lbl} info`, special: [0x00n, 0x01n, 0x02n, 0x03n, 0x04n, 0x06n, 0x0an, 0x10n, 0x12n, 0x1an, 0x20n, 0xffn] },
      { off: at + SYM.other, width: 1, label: `${lbl} other` },
      { off: at + SYM.shndx, width: 2, label: `${lbl} shndx`, special: idx(p.shnum) },
      { off: at + SYM.value, width: 8, label: `${lbl} value` },
      { off: at + SYM.size, width: 8, label: `${lbl} size` },
    );
  }
  for (const r of p.sections.filter((s) => s.type === SHT.RELA)) {
    for (let o = 0; o + 24 <= r.size; o += 24) {
      const lbl = `${r.name}[${o / 24}]`;
      out.push(
        { off: r.offset + o + RELA.offset, width: 8, label: `${lbl} offset` },
        { off: r.offset + o + RELA.info, width: 4, label: `${lbl} type`, special: [0n, 1n, 2n, 3n, 4n, 5n, 9n, 10n, 11n, 24n, 41n, 42n, 0xffffn] },
        { off: r.offset + o + RELA.info + 4, width: 4, label: `${lbl} sym`, special: [0n, 1n, BigInt(p.symbols.length - 1), BigInt(p.symbols.length), 0xffffffn] },
        { off: r.offset + o + RELA.addend, width: 8, label: `${lbl} addend` },
      );
    }
  }
  for (const n of NOTE_SECTIONS) {
    const s = p.sections.find((x) => x.name === n);
    if (!s || s.size < 12) continue;
    out.push(
      { off: s.offset, width: 4, label: `${n} namesz` },
      { off: s.offset + 4, width: 4, label: `${n} descsz` },
      { off: s.offset + 8, width: 4, label: `${n} type` },
    );
    if (s.size >= 28) out.push({ off: s.offset + 24, width: 4, label: `${n} desc word`, special: [0n, 1n, 2n] });
  }
  const fs = p.sections.find((s) => s.name === '.livepatch.funcs');
  if (fs && fs.type !== SHT.NOBITS) {
    for (let o = 0; o + FUNC.size <= fs.size; o += FUNC.size) {
      const lbl = `funcs[${o / FUNC.size}]`;
      for (const [f, w] of [['name', 8], ['newAddr', 8], ['oldAddr', 8], ['newSize', 4], ['oldSize', 4], ['version', 1], ['expectFlags', 1], ['expectData', 8]] as const) {
        out.push({ off: fs.offset + o + FUNC[f], width: w, label: `${lbl} ${f}`, special: f === 'version' ? [0n, 1n, 2n, 3n] : f === 'expectFlags' ? [0n, 1n, 0x3fn, 0x41n, 0xffn] : undefined });
      }
    }
  }
  return out;
}

/** splitmix32-style PRNG: deterministic, good enough to pick fields and values. */
export class Rng {
  private s: number;
  constructor(seed: number, stream: number) {
    this.s = (Math.imul(seed ^ 0x9e3779b9, 0x85ebca6b) ^ Math.imul(stream + 1, 0xc2b2ae35)) >>> 0;
    for (let i = 0; i < 4; i++) this.u32();
  }
  u32(): number {
    this.s = (this.s + 0x9e3779b9) >>> 0;
    let z = this.s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    return (z ^ (z >>> 16)) >>> 0;
  }
  /** 0 <= n < max. */
  int(max: number): number {
    return max <= 0 ? 0 : this.u32() % max;
  }
  pick<T>(a: readonly T[]): T {
    return a[this.int(a.length)]!;
  }
  big(width: Width): bigint {
    let v = 0n;
    for (let i = 0; i < width; i++) v = (v << 8n) | BigInt(this.u32() & 0xff);
    return v;
  }
}

function valueFor(rng: Rng, f: Field, current: bigint): bigint {
  const max = (1n << BigInt(8 * f.width)) - 1n;
  const r = rng.int(10);
  let v: bigint;
  if (r < 3 && f.special?.length) v = rng.pick(f.special);
  else if (r < 6) v = rng.pick(INTERESTING);
  else if (r < 8) v = current + BigInt(rng.int(17) - 8); // near the real value: off-by-one territory
  else v = rng.big(f.width);
  return BigInt.asUintN(8 * f.width, v) & max;
}

function readField(b: Buffer, off: number, width: Width): bigint {
  if (off + width > b.length) return 0n;
  switch (width) {
    case 1: return BigInt(b.readUInt8(off));
    case 2: return BigInt(b.readUInt16LE(off));
    case 4: return BigInt(b.readUInt32LE(off));
    case 8: return b.readBigUInt64LE(off);
  }
}

/**
 * A section recast: new type (NOBITS half the time), size and flags at
 * once, the combination one-field mutations rarely reach (a non-allocated
 * NOBITS `.livepatch.funcs` of a terabyte).
 */
function recast(rng: Rng, fields: Field[]): Mutation[] {
  const types = fields.filter((f) => f.label.startsWith('shdr[') && f.label.endsWith(' type'));
  if (!types.length) return [];
  const t = rng.pick(types);
  const sec = t.label.slice(0, -' type'.length);
  const hdr = t.off - SHDR.type;
  return [
    { kind: 'write', off: t.off, width: 4, value: rng.int(2) ? BigInt(SHT.NOBITS) : rng.pick(SHT_VALUES), label: `${sec} type` },
    { kind: 'write', off: hdr + SHDR.size, width: 8, value: rng.pick(INTERESTING), label: `${sec} size` },
    { kind: 'write', off: hdr + SHDR.flags, width: 8, value: rng.pick(FLAG_VALUES), label: `${sec} flags` },
  ];
}

/** The mutations of case `index` of seed `seed` on a payload with these fields: 1 to 3, mostly field writes. */
export function caseMutations(seed: number, index: number, bytes: Buffer, fields: Field[]): Mutation[] {
  const rng = new Rng(seed, index);
  const n = 1 + rng.int(3);
  const out: Mutation[] = [];
  for (let k = 0; k < n; k++) {
    const r = rng.int(20);
    if (r === 0) out.push({ kind: 'truncate', len: rng.int(bytes.length) });
    else if (r === 3 || r === 4) out.push(...recast(rng, fields));
    else if (r <= 2) out.push({ kind: 'flip', pos: rng.int(bytes.length), bit: rng.int(8) });
    else {
      const f = rng.pick(fields);
      out.push({ kind: 'write', off: f.off, width: f.width, value: valueFor(rng, f, readField(bytes, f.off, f.width)), label: f.label });
    }
  }
  return out;
}

/** Apply mutations to a copy. */
export function applyMutations(bytes: Buffer, muts: Mutation[]): Buffer {
  let b = Buffer.from(bytes);
  for (const m of muts) {
    if (m.kind === 'truncate') b = b.subarray(0, Math.min(m.len, b.length));
    else if (m.kind === 'flip') {
      if (m.pos < b.length) b[m.pos]! ^= 1 << m.bit;
    } else if (m.off + m.width <= b.length) {
      switch (m.width) {
        case 1: b.writeUInt8(Number(m.value), m.off); break;
        case 2: b.writeUInt16LE(Number(m.value), m.off); break;
        case 4: b.writeUInt32LE(Number(m.value), m.off); break;
        case 8: b.writeBigUInt64LE(m.value, m.off); break;
      }
    }
  }
  return b;
}

/** One line describing mutations, for reports. */
export function describeMutations(muts: Mutation[]): string {
  return muts.map((m) => m.kind === 'write' ? `${m.label} = 0x${m.value.toString(16)}` : m.kind === 'flip' ? `flip bit ${m.bit} of byte 0x${m.pos.toString(16)}` : `truncate to ${m.len} bytes`).join('; ');
}
