/**
 * Offline memory: the image's loaded segments as the loader would map
 * them, with copy-on-write pages for patches and payload allocations.
 * Nothing is ever written back to the file.
 */
import { fail } from '../../errors.js';
import type { ElfFile } from '../../elf/file.js';

const PAGE = 4096n;

export class ImageMemory {
  private readonly pages = new Map<bigint, Uint8Array>();
  constructor(private readonly elf: ElfFile) {}

  private page(pn: bigint, create: boolean): Uint8Array | undefined {
    let p = this.pages.get(pn);
    if (p || !create) return p;
    const addr = pn * PAGE;
    p = new Uint8Array(Number(PAGE));
    // Fill from the image where its segments cover this page.
    for (let o = 0n; o < PAGE; ) {
      const a = addr + o;
      const seg = this.elf.loads().find((s) => a >= s.vaddr && a < s.vaddr + s.memsz);
      if (!seg) {
        o++;
        continue;
      }
      const segEnd = seg.vaddr + seg.memsz;
      const n = (segEnd < addr + PAGE ? segEnd : addr + PAGE) - a;
      p.set(this.elf.readVirtual(a, Number(n)), Number(o));
      o += n;
    }
    this.pages.set(pn, p);
    return p;
  }

  /** Whether [addr, addr+len) is mapped: by the image or an allocation. */
  private mapped(addr: bigint, len: number): boolean {
    for (let a = addr; a < addr + BigInt(len); ) {
      const pn = a / PAGE;
      const next = (pn + 1n) * PAGE;
      const end = next < addr + BigInt(len) ? next : addr + BigInt(len);
      if (!this.pages.has(pn) && !this.elf.isMapped(a, Number(end - a))) return false;
      a = end;
    }
    return true;
  }

  read(addr: bigint, len: number): Uint8Array {
    if (!this.mapped(addr, len)) fail('EFAULT', `address 0x${addr.toString(16)} (+${len}) is not mapped in the image`);
    const out = new Uint8Array(len);
    this.copy(addr, len, (pg, po, o, n) => out.set(pg.subarray(po, po + n), o));
    return out;
  }

  write(addr: bigint, data: Uint8Array): void {
    if (!this.mapped(addr, data.length)) fail('EFAULT', `address 0x${addr.toString(16)} (+${data.length}) is not mapped in the image`);
    this.copy(addr, data.length, (pg, po, o, n) => pg.set(data.subarray(o, o + n), po));
  }

  /** Map zeroed pages at [addr, addr+size). */
  map(addr: bigint, size: number): void {
    for (let pn = addr / PAGE; pn * PAGE < addr + BigInt(size); pn++) this.pages.set(pn, new Uint8Array(Number(PAGE)));
  }

  unmap(addr: bigint, size: number): void {
    for (let pn = addr / PAGE; pn * PAGE < addr + BigInt(size); pn++) this.pages.delete(pn);
  }

  private copy(addr: bigint, len: number, f: (pg: Uint8Array, pageOff: number, off: number, n: number) => void): void {
    let o = 0;
    while (o < len) {
      const a = addr + BigInt(o);
      const pn = a / PAGE;
      const po = Number(a - pn * PAGE);
      const n = Math.min(len - o, Number(PAGE) - po);
      f(this.page(pn, true)!, po, o, n);
      o += n;
    }
  }
}
