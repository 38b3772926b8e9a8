/**
 * The consistency check, Xen's quiescence done the userspace way: with
 * every thread stopped, no instruction pointer may be inside a busy range
 * and no word of a thread's stack (from its stack pointer to the top of
 * its stack mapping) may be a return address into one. The stack scan is
 * conservative: a stale word only delays the action until the timeout.
 */
import { arch } from '../../arch/index.js';
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

/**
 * The first conflict found, or null when it is safe to patch. `maps` may
 * have been read before the threads stopped: a thread whose stack pointer
 * lies in no mapping it lists (a thread started since) gets `fresh()`.
 */
export function findConflict(proc: StoppedProcess, mem: ProcessMemory, maps: MapEntry[], busy: AddrRange[], fresh?: () => MapEntry[]): Conflict | null {
  if (!busy.length) return null;
  // Stack words are compared as doubles, not BigInts (this runs while the
  // process is stopped): user addresses are below 2^47, so exact; a word
  // of 2^53 or more rounds but can match no user range either way.
  const lo = busy.map((r) => Number(r.start));
  const hi = busy.map((r) => Number(r.end));
  for (const t of proc.threads) {
    // The registers read when the thread stopped: remote operations restore them exactly.
    const regs = t.regs ?? proc.refreshRegs(t.tid);
    const pc = arch.process.pc(regs);
    for (const r of busy) {
      if (pc >= r.start && pc < r.end) return { thread: t.label, range: r, how: `is executing ${r.label} (rip ${hex(pc)})` };
    }
    const rsp = arch.process.sp(regs) & ~7n;
    let stack: Uint8Array | null = null;
    // With maps read before the stop, a stack that is not listed, or no longer
    // readable to the listed end, sends the check to fresh maps once.
    for (;;) {
      const m = maps.find((e) => rsp >= e.start && rsp < e.end);
      if (m) {
        const len = Number(m.end - rsp < BigInt(MAX_STACK_SCAN) ? m.end - rsp : BigInt(MAX_STACK_SCAN));
        try {
          stack = mem.read(rsp, len);
          break;
        } catch {
          /* stale or unreadable */
        }
      }
      if (!fresh) break;
      maps = fresh();
      fresh = undefined;
    }
    if (!stack) continue;
    const dv = new DataView(stack.buffer, stack.byteOffset, stack.byteLength);
    for (let o = 0; o + 8 <= stack.length; o += 8) {
      const w = dv.getUint32(o + 4, true) * 4294967296 + dv.getUint32(o, true);
      for (let k = 0; k < lo.length; k++) {
        // A return address follows its call: it may equal the range's end.
        if (w > lo[k]! && w <= hi[k]!) {
          const r = busy[k]!;
          return { thread: t.label, range: r, how: `has a return address into ${r.label} on its stack (at ${hex(rsp + BigInt(o))})` };
        }
      }
    }
  }
  return null;
}
