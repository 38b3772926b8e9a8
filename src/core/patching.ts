/**
 * Planning the memory writes of apply and revert. Plans are computed
 * against a memory overlay before anything is written, so REPLACE can
 * simulate "revert everything, then check expectations" and refuse
 * without having touched the target.
 */
import { arch } from '../arch/index.js';
import { fromHex, toHex } from '../elf/bytes.js';
import type { FuncRecord, JournalWrite, PayloadRecord } from './state.js';
import type { AddrRange } from './target.js';

export interface PlannedWrite {
  addr: bigint;
  before: Uint8Array;
  after: Uint8Array;
  payload: PayloadRecord;
  func: FuncRecord;
  kind: 'apply' | 'revert';
}

/** Target memory with pending writes laid over it. */
export class Overlay {
  private readonly writes: { addr: bigint; data: Uint8Array }[] = [];
  constructor(private readonly read0: (addr: bigint, len: number) => Uint8Array) {}

  read(addr: bigint, len: number): Uint8Array {
    const out = new Uint8Array(this.read0(addr, len));
    for (const w of this.writes) {
      const end = addr + BigInt(len);
      const wEnd = w.addr + BigInt(w.data.length);
      if (w.addr >= end || wEnd <= addr) continue;
      for (let a = w.addr > addr ? w.addr : addr; a < (wEnd < end ? wEnd : end); a++) {
        out[Number(a - addr)] = w.data[Number(a - w.addr)]!;
      }
    }
    return out;
  }

  write(addr: bigint, data: Uint8Array): void {
    this.writes.push({ addr, data });
  }
}

/** Where the jump of `f` goes: its preserving veneer, else the replacement itself. */
export function entryOf(f: FuncRecord): bigint {
  return f.veneer?.addr ?? f.newAddr;
}

/** Bytes the patch of `f` occupies after its patch offset. */
export function patchLength(f: FuncRecord): number {
  return f.newAddr !== 0n ? arch.jumpLen : Math.max(0, f.newSize - f.patchOffset);
}

/** The writes that apply `p` (jump or NOPs per function). */
export function planApply(p: PayloadRecord, mem: Overlay): PlannedWrite[] {
  const out: PlannedWrite[] = [];
  for (const f of p.funcs) {
    const len = patchLength(f);
    if (len === 0) continue;
    const addr = f.oldAddr + BigInt(f.patchOffset);
    const after = f.newAddr !== 0n ? arch.encodeJump(addr, entryOf(f)) : arch.encodeNops(len);
    const before = mem.read(addr, len);
    mem.write(addr, after);
    out.push({ addr, before, after, payload: p, func: f, kind: 'apply' });
  }
  return out;
}

/** The writes that revert `p`: undo buffers restored, last function first. */
export function planRevert(p: PayloadRecord, mem: Overlay): PlannedWrite[] {
  const out: PlannedWrite[] = [];
  for (const f of [...p.funcs].reverse()) {
    if (!f.applied || !f.undo) continue;
    const addr = f.oldAddr + BigInt(f.patchOffset);
    const after = fromHex(f.undo);
    const before = mem.read(addr, after.length);
    mem.write(addr, after);
    out.push({ addr, before, after, payload: p, func: f, kind: 'revert' });
  }
  return out;
}

/** Record in the payload records what the writes did. */
export function commitWrites(writes: PlannedWrite[]): void {
  for (const w of writes) {
    if (w.kind === 'apply') {
      w.func.undo = toHex(w.before);
      w.func.applied = true;
    } else {
      w.func.undo = '';
      w.func.applied = false;
    }
  }
}

export function toJournal(writes: PlannedWrite[]): JournalWrite[] {
  return writes.map((w) => ({ addr: w.addr, before: toHex(w.before), after: toHex(w.after) }));
}

/** Ranges no thread may be in while `p`'s functions are patched. */
export function patchRanges(p: PayloadRecord, withNew: boolean): AddrRange[] {
  const out: AddrRange[] = [];
  for (const f of p.funcs) {
    out.push({ start: f.oldAddr, end: f.oldAddr + BigInt(f.oldSize), label: `function ${f.name}` });
    if (withNew && f.newAddr !== 0n) {
      out.push({ start: f.newAddr, end: f.newAddr + BigInt(Math.max(f.newSize, 1)), label: `${f.name} of payload ${p.name}` });
    }
    // A thread in a veneer, or returning into one, would come back to code that is going away.
    if (withNew && f.veneer) {
      out.push({ start: f.veneer.addr, end: f.veneer.addr + BigInt(f.veneer.size), label: `veneer of ${f.name} of payload ${p.name}` });
    }
  }
  return out;
}
