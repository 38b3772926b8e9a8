/**
 * The order in which a process's dynamic linker looks symbols up: its link
 * map, headed by r_debug, whose address ld.so writes into the executable's
 * DT_DEBUG entry (as debuggers find it). The executable, LD_PRELOAD
 * libraries, the DT_NEEDED closure breadth first, then what dlopen added:
 * a call through the PLT is bound to the first of them that defines the
 * symbol. Address order (what the maps give) is not that order: an
 * LD_PRELOAD library is usually mapped above libc.
 *
 * The words are the process's own, read from its memory: every pointer is
 * only followed through reads that fail cleanly, the walk is bounded and
 * stops at a loop, and anything unexpected means "unknown" (undefined).
 */
import type { ProcessObject } from './objects.js';

/** struct link_map: l_addr, l_name, l_ld, l_next, l_prev. */
const LINK_MAP_WORDS = 5;
const L_LD = 2;
const L_NEXT = 3;
/** struct r_debug: int r_version; struct link_map *r_map at offset 8. */
const R_MAP = 8n;
/** More objects than any process loads (glibc's own limit on namespaces' objects is far above real use). */
const MAX_OBJECTS = 4096;

/** Reads `len` bytes of the process at `addr` (throws when unreadable). */
export type ReadMemory = (addr: bigint, len: number) => Uint8Array;

function word(read: ReadMemory, addr: bigint): bigint {
  const b = read(addr, 8);
  return new DataView(b.buffer, b.byteOffset, 8).getBigUint64(0, true);
}

/**
 * `objects` in link-map order (the objects the map does not name, such as
 * those of another dlmopen namespace, after them in address order), or
 * undefined when the link map cannot be found or read: a static program,
 * one whose dynamic linker has not run yet, or memory that does not hold
 * what it should.
 */
export function linkMapOrder(objects: readonly ProcessObject[], read: ReadMemory): ProcessObject[] | undefined {
  try {
    // ld.so fills in the main program's DT_DEBUG only (an executable dlopened as a library keeps 0).
    const filled: bigint[] = [];
    for (const o of objects) {
      const slot = o.debugSlot();
      if (slot === undefined) continue;
      const v = word(read, slot);
      if (v !== 0n) filled.push(v);
    }
    if (filled.length !== 1) return undefined;
    const rDebug = filled[0]!;
    const ordered: ProcessObject[] = [];
    const seen = new Set<bigint>();
    for (let node = word(read, rDebug + R_MAP), n = 0; node !== 0n; n++) {
      if (n >= MAX_OBJECTS || seen.has(node)) return undefined;
      seen.add(node);
      const b = read(node, LINK_MAP_WORDS * 8);
      const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
      const ld = v.getBigUint64(L_LD * 8, true);
      // By its dynamic section's address: the vdso's entry (no file) and unknown ones match nothing.
      const o = objects.find((x) => ld >= x.range.start && ld < x.range.end);
      if (o && !ordered.includes(o)) ordered.push(o);
      node = v.getBigUint64(L_NEXT * 8, true);
    }
    if (!ordered.length) return undefined;
    return [...ordered, ...objects.filter((o) => !ordered.includes(o))];
  } catch {
    return undefined;
  }
}

/**
 * The objects in the global lookup scope, in order, out of `ordered` (the
 * link-map order): the program, LD_PRELOAD libraries and the DT_NEEDED
 * closure, which ld.so loads first, so they are the chain's prefix up to
 * the last object of the closure. What dlopen added later (RTLD_LOCAL
 * plugins) is left out: it binds nobody else's calls.
 */
export function globalScope(ordered: readonly ProcessObject[]): ProcessObject[] {
  const [program] = ordered;
  if (!program) return [];
  const bySoname = new Map<string, ProcessObject>();
  for (const o of ordered) {
    const name = o.soname() ?? o.path.replace(/^.*\//, '');
    if (!bySoname.has(name)) bySoname.set(name, o);
  }
  const closure = new Set<ProcessObject>([program]);
  const queue = [program];
  while (queue.length) {
    for (const n of queue.shift()!.needed()) {
      const o = bySoname.get(n.replace(/^.*\//, ''));
      if (o && !closure.has(o)) {
        closure.add(o);
        queue.push(o);
      }
    }
  }
  let last = 0;
  ordered.forEach((o, i) => {
    if (closure.has(o)) last = i;
  });
  return ordered.slice(0, last + 1);
}
