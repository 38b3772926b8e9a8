/**
 * The consistency check, Xen's quiescence done the userspace way: with
 * every thread stopped, no instruction pointer may be inside a busy range
 * and no word of a thread's stack (from its stack pointer to the top of
 * its stack mapping) may be a return address into one. The stack scan is
 * conservative: a stale word only delays the action until the timeout.
 */
import type { AddrRange } from '../../core/target.js';
import type { MapEntry } from './maps.js';
import type { ProcessMemory } from './memory.js';
import type { StoppedProcess } from './threads.js';

export interface Conflict {
  thread: string;
  range: AddrRange;
  /** Where: "is executing ... (rip 0x...)" or "has a return address into ... on its stack". */
  how: string;
}

function hex(v: bigint): string {
  return `0x${v.toString(16)}`;
}

/** Limit of one stack read, so a huge or unbounded mapping cannot stall the check. */
const MAX_STACK_SCAN = 8 * 1024 * 1024;

/** The first conflict found, or null when it is safe to patch. */
export function findConflict(proc: StoppedProcess, mem: ProcessMemory, maps: MapEntry[], busy: AddrRange[]): Conflict | null {
  if (!busy.length) return null;
  for (const t of proc.threads) {
    const regs = proc.refreshRegs(t.tid);
    const rip = regs.rip;
    for (const r of busy) {
      if (rip >= r.start && rip < r.end) return { thread: t.label, range: r, how: `is executing ${r.label} (rip ${hex(rip)})` };
    }
    const rsp = regs.rsp & ~7n;
    const m = maps.find((e) => rsp >= e.start && rsp < e.end);
    if (!m) continue;
    const len = Number(m.end - rsp < BigInt(MAX_STACK_SCAN) ? m.end - rsp : BigInt(MAX_STACK_SCAN));
    let stack: Uint8Array;
    try {
      stack = mem.read(rsp, len);
    } catch {
      continue;
    }
    const dv = new DataView(stack.buffer, stack.byteOffset, stack.byteLength);
    for (let o = 0; o + 8 <= stack.length; o += 8) {
      const w = dv.getBigUint64(o, true);
      for (const r of busy) {
        // A return address follows its call: it may equal the range's end.
        if (w > r.start && w <= r.end) {
          return { thread: t.label, range: r, how: `has a return address into ${r.label} on its stack (at ${hex(rsp + BigInt(o))})` };
        }
      }
    }
  }
  return null;
}
