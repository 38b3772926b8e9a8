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
 * How many bytes of a thread's stack to scan, from `sp` (in mapping `m`):
 * to the end of the mapping, at most MAX_STACK_SCAN; for the main thread
 * on its initial stack (`initialTop`, stat's startstack, within the same
 * mapping above `sp`) only up to there: above it lie argc, argv, the
 * environment and the auxiliary vector, which no call ever pushed (and
 * the environment's strings are often most of the mapping).
 */
export function stackSpan(sp: bigint, m: { start: bigint; end: bigint }, initialTop?: bigint): number {
  const end = initialTop !== undefined && initialTop > sp && initialTop <= m.end ? initialTop : m.end;
  const n = end - sp;
  return Number(n < BigInt(MAX_STACK_SCAN) ? n : BigInt(MAX_STACK_SCAN));
}

/**
 * The first conflict found, or null when it is safe to patch. `maps` may
 * have been read before the threads stopped: a thread whose stack pointer
 * lies in no mapping it lists (a thread started since) gets `fresh()`.
 * `initialTop`: where the main thread's initial stack started (see stackSpan).
 */
export function findConflict(proc: StoppedProcess, mem: ProcessMemory, maps: MapEntry[], busy: AddrRange[], fresh?: () => MapEntry[], initialTop?: bigint): Conflict | null {
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
        const len = stackSpan(rsp, m, t.tid === proc.pid ? initialTop : undefined);
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
    const hit = returnAddressIn(stack, lo, hi);
    if (hit) {
      const r = busy[hit.range]!;
      return { thread: t.label, range: r, how: `has a return address into ${r.label} on its stack (at ${hex(rsp + BigInt(hit.offset))})` };
    }
  }
  return null;
}

const TWO_32 = 4294967296;
/** Distinct upper halves searched natively at most; more (a range across many 4 GiB blocks) takes the word loop. */
const MAX_UPPER_HALVES = 4;

/**
 * The first 8-byte aligned word of `stack` in (lo[k], hi[k]] for some k
 * (a return address follows its call, so it may equal a range's end).
 * Words are found through their upper halves with Buffer.indexOf: this
 * runs inside the stop, usually before the JIT has warmed up, where a
 * loop over every word costs more than the rest of the check. Upper half 0
 * (a non-PIE program below 4 GiB) is as common as a zero word, so it takes
 * the word loop.
 */
export function returnAddressIn(stack: Uint8Array, lo: number[], hi: number[]): { offset: number; range: number } | null {
  const buf = Buffer.from(stack.buffer, stack.byteOffset, stack.byteLength);
  const inRange = (o: number): number => {
    const w = buf.readUInt32LE(o + 4) * TWO_32 + buf.readUInt32LE(o);
    for (let k = 0; k < lo.length; k++) if (w > lo[k]! && w <= hi[k]!) return k;
    return -1;
  };
  const uppers = new Set<number>();
  for (let k = 0; k < lo.length; k++) {
    for (let u = Math.floor((lo[k]! + 1) / TWO_32); u <= Math.floor(hi[k]! / TWO_32) && uppers.size <= MAX_UPPER_HALVES; u++) uppers.add(u);
  }
  let first: { offset: number; range: number } | null = null;
  if (uppers.has(0) || uppers.size > MAX_UPPER_HALVES) {
    for (let o = 0; o + 8 <= buf.length; o += 8) {
      const k = inRange(o);
      if (k >= 0) return { offset: o, range: k };
    }
    return null;
  }
  const pattern = Buffer.alloc(4);
  for (const u of uppers) {
    pattern.writeUInt32LE(u);
    for (let i = buf.indexOf(pattern, 4); i !== -1; i = buf.indexOf(pattern, i + 1)) {
      const o = i - 4;
      if (first && o >= first.offset) break;
      if (o % 8 !== 0) continue;
      const k = inRange(o);
      if (k >= 0) {
        first = { offset: o, range: k };
        break;
      }
    }
  }
  return first;
}
