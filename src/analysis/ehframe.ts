/**
 * Function extents from `.eh_frame`: every FDE covers one function (or
 * one `.cold` part) exactly, stripped or not, which is what a stripped
 * shared library still tells about its static functions. Records that do
 * not parse end the walk; nothing here throws.
 */
import type { ElfFile } from '../elf/index.js';
import { SHT_NOBITS } from '../elf/index.js';

/** [start, end) link-time ranges, sorted by start. */
export function readFdeRanges(elf: ElfFile): [bigint, bigint][] {
  const sec = elf.section('.eh_frame');
  if (!sec || sec.type === SHT_NOBITS || !elf.inFile(sec)) return [];
  const data = elf.data(sec);
  const out: [bigint, bigint][] = [];
  try {
    walk(data, sec.addr, out);
  } catch {
    // A truncated record: keep what was read before it.
  }
  out.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  return out;
}

class Reader {
  constructor(readonly d: Uint8Array, public o: number) {}
  u8(): number {
    if (this.o >= this.d.length) throw new RangeError('eh_frame');
    return this.d[this.o++]!;
  }
  uN(n: number): bigint {
    let v = 0n;
    for (let i = 0; i < n; i++) v |= BigInt(this.u8()) << BigInt(8 * i);
    return v;
  }
  uleb(): bigint {
    let v = 0n, shift = 0n;
    for (;;) {
      const b = this.u8();
      v |= BigInt(b & 0x7f) << shift;
      shift += 7n;
      if (!(b & 0x80)) return v;
      if (shift > 70n) throw new RangeError('leb');
    }
  }
  sleb(): bigint {
    let v = 0n, shift = 0n, b: number;
    do {
      b = this.u8();
      v |= BigInt(b & 0x7f) << shift;
      shift += 7n;
      if (shift > 70n) throw new RangeError('leb');
    } while (b & 0x80);
    if (b & 0x40) v -= 1n << shift;
    return v;
  }
}

/** Read a pointer in DW_EH_PE encoding `enc`; null for encodings we cannot place (datarel, indirect...). */
function readPtr(r: Reader, enc: number, secAddr: bigint): bigint | null {
  if (enc === 0xff) return null;
  const fieldAddr = secAddr + BigInt(r.o);
  let v: bigint;
  switch (enc & 0x0f) {
    case 0x00: v = r.uN(8); break;
    case 0x01: v = r.uleb(); break;
    case 0x02: v = r.uN(2); break;
    case 0x03: v = r.uN(4); break;
    case 0x04: v = r.uN(8); break;
    case 0x09: v = r.sleb(); break;
    case 0x0a: v = BigInt.asIntN(16, r.uN(2)); break;
    case 0x0b: v = BigInt.asIntN(32, r.uN(4)); break;
    case 0x0c: v = BigInt.asIntN(64, r.uN(8)); break;
    default: throw new RangeError('encoding');
  }
  if (enc & 0x80) return null;
  switch (enc & 0x70) {
    case 0x00: return BigInt.asUintN(64, v);
    case 0x10: return BigInt.asUintN(64, fieldAddr + v);
    default: return null;
  }
}

function walk(d: Uint8Array, secAddr: bigint, out: [bigint, bigint][]): void {
  const cieEnc = new Map<number, number>();
  let o = 0;
  while (o + 4 <= d.length) {
    const r = new Reader(d, o);
    let len = r.uN(4);
    if (len === 0n) break; // terminator
    if (len === 0xffffffffn) len = r.uN(8);
    const bodyStart = r.o;
    const end = bodyStart + Number(len);
    if (end > d.length || len > BigInt(d.length)) break;
    const idPos = r.o;
    const id = Number(r.uN(4));
    if (id === 0) {
      cieEnc.set(o, cieEncoding(r));
    } else {
      const cieOff = idPos - id;
      const enc = cieEnc.get(cieOff);
      if (enc !== undefined) {
        const start = readPtr(r, enc, secAddr);
        const range = readPtr(r, enc & 0x0f, secAddr);
        if (start !== null && range !== null && start !== 0n && range > 0n) out.push([start, start + range]);
      }
    }
    o = end;
  }
}

function cieEncoding(r: Reader): number {
  const version = r.u8();
  let aug = '';
  for (let c = r.u8(); c !== 0; c = r.u8()) aug += String.fromCharCode(c);
  if (aug.includes('eh')) r.uN(8);
  if (version >= 4) {
    r.u8(); // address size
    r.u8(); // segment selector size
  }
  r.uleb(); // code alignment
  r.sleb(); // data alignment
  if (version === 1) r.u8();
  else r.uleb(); // return address register
  let enc = 0x00; // absptr
  if (aug.startsWith('z')) {
    r.uleb(); // augmentation data length
    for (const ch of aug.slice(1)) {
      if (ch === 'R') enc = r.u8();
      else if (ch === 'L') r.u8();
      else if (ch === 'P') {
        const penc = r.u8();
        readPtr(r, penc & 0x7f, 0n);
      } else if (ch === 'S' || ch === 'B' || ch === 'G') continue;
      else break;
    }
  }
  return enc;
}
