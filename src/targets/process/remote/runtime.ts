/**
 * Where remote operations run from. Once a process has a runtime page (an
 * RX page of ours), each operation runs from a self-restoring stub written
 * there, so a hotstack killed at any instant leaves the thread to finish the
 * operation and restore itself. Before that (the mmap creating the page), a
 * `syscall` instruction of the target is borrowed.
 */
import { fail } from '../../../errors.js';
import { arch, type Stub } from '../../../arch/index.js';
import { readMaps, type MapEntry } from '../maps.js';
import { coveredByAnonymous } from '../validate.js';
import type { StoppedProcess } from '../threads.js';

/** The runtime page: its first bytes are the trap of calls made without a stub, the rest holds stubs. */
export const RUNTIME_PAGE_SIZE = 4096;
const STUB_OFFSET = 256;
/**
 * Room for a batch of system calls and the restore sequence: six calls
 * with six 64-bit arguments each and the signal that ends them take about
 * 520 bytes (an upload's batch: an mmap and an mprotect per permission).
 */
export const STUB_SIZE = 640;
/**
 * Stubs rotate among this many slots, starting at a random one per page, so
 * that a thread left running an old stub by a killed hotstack (e.g. inside a
 * long hook) is unlikely to find its stub overwritten by the next hotstack.
 */
const STUB_SLOTS = Math.floor((RUNTIME_PAGE_SIZE - STUB_OFFSET) / STUB_SIZE);
const MAX_SCAN = 16 * 1024 * 1024;

interface RuntimePage {
  addr: bigint;
  nextSlot: number;
}

/** The one record of each stopped process's runtime page. */
const pages = new WeakMap<StoppedProcess, RuntimePage>();
const borrowed = new WeakMap<StoppedProcess, bigint>();

/**
 * Tell the remote operations of `proc` that `page` (RUNTIME_PAGE_SIZE bytes,
 * RX, ours) may hold self-restoring stubs. Until this is called, system calls
 * borrow a `syscall` instruction of the target and calls return to the trap
 * at their trap address: a hotstack killed meanwhile leaves the thread
 * running with temporary registers.
 */
export function useRuntimePage(proc: StoppedProcess, page: bigint): void {
  pages.set(proc, { addr: page, nextSlot: Math.floor(Math.random() * STUB_SLOTS) });
}

/**
 * Whether `t` (an address from the state file: it could name libc's code)
 * is a runtime page of ours: a private anonymous RX page that begins with
 * the trap.
 */
export function runtimePageValid(maps: MapEntry[], mem: { read(addr: bigint, len: number): Uint8Array }, t: bigint): boolean {
  if (t % BigInt(RUNTIME_PAGE_SIZE) !== 0n || !coveredByAnonymous(maps, t, t + BigInt(RUNTIME_PAGE_SIZE), 'r-xp')) return false;
  try {
    return mem.read(t, 1)[0] === arch.process.trapByte;
  } catch {
    return false;
  }
}

/** The runtime page registered for `proc`, if any. */
export function runtimePageOf(proc: StoppedProcess): bigint | undefined {
  return pages.get(proc)?.addr;
}

/** Write `stub` to the next slot of the runtime page of `proc` (undefined without one); returns its address. */
export function placeStub(proc: StoppedProcess, stub: Pick<Stub, 'bytes'>): bigint | undefined {
  const page = pages.get(proc);
  if (!page) return undefined;
  if (stub.bytes.length > STUB_SIZE) fail('EIO', `internal: stub of ${stub.bytes.length} bytes exceeds its ${STUB_SIZE}-byte slot`);
  const at = page.addr + BigInt(STUB_OFFSET + page.nextSlot * STUB_SIZE);
  // The page's neighbour may be payload code (one span): never write past it.
  if (STUB_OFFSET + (page.nextSlot + 1) * STUB_SIZE > RUNTIME_PAGE_SIZE) fail('EIO', `internal: stub slot ${page.nextSlot} runs past the runtime page`);
  page.nextSlot = (page.nextSlot + 1) % STUB_SLOTS;
  proc.memory.write(at, stub.bytes);
  return at;
}

function scanForSyscall(proc: StoppedProcess, m: MapEntry): bigint | undefined {
  const insn = arch.process.syscallInsn;
  const len = Number(m.end - m.start < BigInt(MAX_SCAN) ? m.end - m.start : BigInt(MAX_SCAN));
  const bytes = proc.memory.readPartial(m.start, len);
  // Any occurrence will do, on an instruction boundary or not: rip is set to
  // it and exactly one instruction runs.
  const i = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).indexOf(insn);
  return i >= 0 ? m.start + BigInt(i) : undefined;
}

/**
 * Address of a system call instruction in executable memory of the
 * process: the one before `pc` (where a thread stopped in a system call
 * is), else the vdso first (always there, never replaced), then libc, then
 * any executable mapping. Cached per StoppedProcess.
 */
export function findSyscallInsn(proc: StoppedProcess, pc?: bigint): bigint {
  const cached = borrowed.get(proc);
  if (cached !== undefined) return cached;
  // A thread stopped in a system call sits right after its instruction: no scan needed.
  // In pc's own page only, which is executable (the thread runs there).
  const insn = arch.process.syscallInsn;
  if (pc !== undefined && pc % BigInt(RUNTIME_PAGE_SIZE) >= BigInt(insn.length)) {
    try {
      const at = pc - BigInt(insn.length);
      if (Buffer.from(proc.memory.read(at, insn.length)).equals(insn)) {
        borrowed.set(proc, at);
        return at;
      }
    } catch {
      /* unreadable: scan */
    }
  }
  const exec = readMaps(proc.pid).filter((m) => m.perms[0] === 'r' && m.perms[2] === 'x' && m.path !== '[vsyscall]');
  const ordered = [
    ...exec.filter((m) => m.path === '[vdso]'),
    ...exec.filter((m) => /\/libc[.-][^/]*$/.test(m.path)),
    ...exec,
  ];
  for (const m of ordered) {
    const at = scanForSyscall(proc, m);
    if (at !== undefined) {
      borrowed.set(proc, at);
      return at;
    }
  }
  fail('ENOENT', `no syscall instruction found in the executable mappings of process ${proc.pid}`);
}
