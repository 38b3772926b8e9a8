/**
 * The address space of a process, from /proc/PID/maps: which objects are
 * mapped where, and where there is room for payload memory within rel32
 * reach (+-2 GiB) of a base object.
 */
import { fail } from '../../errors.js';
import { mapFilesPath, readMapsText, readStackLimit, startBrk } from './procfs.js';

/** One line of /proc/PID/maps. */
export interface MapEntry {
  start: bigint;
  end: bigint;
  /** e.g. "r-xp" */
  perms: string;
  offset: bigint;
  /** "major:minor" in hex, as the kernel prints it. */
  dev: string;
  inode: bigint;
  /** File path (with " (deleted)" as the kernel prints it), "[stack]", "[vdso]", or "" for anonymous memory. */
  path: string;
}

/** A file mapped into the process (an executable, a library, a data file), with all its mappings. */
export interface MappedObject {
  /** Path without the " (deleted)" suffix. */
  path: string;
  /** True when the file was deleted or replaced on disk after being mapped. */
  deleted: boolean;
  dev: string;
  inode: bigint;
  /** Mappings in address order. */
  mappings: MapEntry[];
  /**
   * /proc/PID/map_files/<start>-<end> of the first mapping: opens the very
   * inode that is mapped, even if the path now names another file (upgraded
   * package) or nothing (deleted).
   */
  mapFilesPath: string;
}

const LINE = /^([0-9a-f]+)-([0-9a-f]+) (\S{4}) ([0-9a-f]+) ([0-9a-f]+:[0-9a-f]+) (\d+)(?: +(.*))?$/;

/** Parse the text of a maps file; pure, for tests and for callers that already read it. */
export function parseMaps(text: string): MapEntry[] {
  const out: MapEntry[] = [];
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const m = LINE.exec(line);
    if (!m) fail('EIO', `unexpected line in /proc/PID/maps: ${JSON.stringify(line)}`);
    out.push({
      start: BigInt('0x' + m[1]),
      end: BigInt('0x' + m[2]),
      perms: m[3]!,
      offset: BigInt('0x' + m[4]),
      dev: m[5]!,
      inode: BigInt(m[6]!),
      path: m[7] ?? '',
    });
  }
  return out;
}

/** Current mappings of a process. */
export function readMaps(pid: number): MapEntry[] {
  return parseMaps(readMapsText(pid).text);
}

/** True for mappings backed by a file on a filesystem (not [heap], [vdso], anonymous or anon_inode memory). */
export function isFileBacked(e: MapEntry): boolean {
  return e.inode !== 0n && e.path.startsWith('/');
}

const DELETED = ' (deleted)';

/**
 * Group file-backed mappings by the file (device + inode) they map, in order
 * of first appearance. `base` is the /proc directory for map_files (see procBase).
 */
export function groupObjects(pid: number, entries: MapEntry[], base = `/proc/${pid}`): MappedObject[] {
  const byKey = new Map<string, MappedObject>();
  for (const e of entries) {
    if (!isFileBacked(e)) continue;
    const key = `${e.dev}/${e.inode}`;
    let o = byKey.get(key);
    if (!o) {
      const deleted = e.path.endsWith(DELETED);
      o = {
        path: deleted ? e.path.slice(0, -DELETED.length) : e.path,
        deleted,
        dev: e.dev,
        inode: e.inode,
        mappings: [],
        mapFilesPath: mapFilesPath(base, e.start, e.end),
      };
      byKey.set(key, o);
    }
    o.mappings.push(e);
  }
  return [...byKey.values()];
}

/** Mapped files of a live process. */
export function readObjects(pid: number, snap: MapsSnapshot = readMapsSnapshot(pid)): MappedObject[] {
  return groupObjects(pid, snap.entries, snap.base);
}

/** A process's maps and the /proc directory they came from (see readMapsText). */
export interface MapsSnapshot {
  entries: MapEntry[];
  base: string;
}

/** Read the maps once for several users (the objects and the state, when a command opens a process). */
export function readMapsSnapshot(pid: number): MapsSnapshot {
  const { text, base } = readMapsText(pid);
  return { entries: parseMaps(text), base };
}

// ---------------------------------------------------------------------------
// free gaps

export const PAGE = 0x1000n;
const MiB = 0x100000n;

export interface GapOptions {
  /** Largest distance allowed between any byte of `near` and any byte of the allocation. Default 2 GiB - 64 KiB (margin for instruction lengths). */
  reach?: bigint;
  /**
   * Room the main stack may still grow into, measured down from the top of
   * the [stack] mapping (RLIMIT_STACK, default 8 MiB). The kernel's 1 MiB
   * stack guard gap is added below it: a mapping there would make stack
   * growth fail with SIGSEGV.
   */
  stackLimit?: bigint;
  /** Room kept free above the end of the brk heap so malloc can still grow it. Default 256 MiB. */
  brkReserve?: bigint;
  /** [start_brk, brk) of the process, if known (see readBrk); the [heap] mapping is used otherwise. */
  brk?: { start: bigint; end: bigint };
  /** Lowest usable address (vm.mmap_min_addr). Default 64 KiB. */
  minAddr?: bigint;
  /** End of the user address space. Default 0x7ffffffff000 (47-bit, as mmap uses without a high hint). */
  maxAddr?: bigint;
  /** Other ranges to keep free. */
  avoid?: { start: bigint; end: bigint }[];
}

const STACK_GUARD_GAP = 1n * MiB;

function alignUp(x: bigint): bigint {
  return (x + PAGE - 1n) & ~(PAGE - 1n);
}
function alignDown(x: bigint): bigint {
  return x & ~(PAGE - 1n);
}

/**
 * Page-aligned addresses where `size` bytes could be mapped without touching
 * anything mapped (or reserved for stack/heap growth), such that the whole
 * allocation lies within `reach` of the whole `near` range: candidates for
 * mmap(MAP_FIXED_NOREPLACE) hints, nearest first, one per free gap.
 */
export function findFreeGaps(
  maps: MapEntry[],
  near: { start: bigint; end: bigint },
  size: bigint | number,
  opts: GapOptions = {},
): bigint[] {
  const len = alignUp(BigInt(size));
  if (len <= 0n) return [];
  const reach = opts.reach ?? 0x7fff0000n;
  const minAddr = opts.minAddr ?? 0x10000n;
  const maxAddr = opts.maxAddr ?? 0x7ffffffff000n;

  const busy: { start: bigint; end: bigint }[] = maps.map((m) => ({ start: m.start, end: m.end }));
  const stack = maps.find((m) => m.path === '[stack]');
  if (stack) {
    const limit = opts.stackLimit ?? 8n * MiB;
    const lowest = stack.end - limit < stack.start ? stack.end - limit : stack.start;
    busy.push({ start: lowest - STACK_GUARD_GAP, end: stack.start });
  }
  const heap = opts.brk ?? maps.find((m) => m.path === '[heap]');
  if (heap) {
    const top = heap.end > heap.start ? heap.end : heap.start;
    busy.push({ start: heap.start, end: top + (opts.brkReserve ?? 256n * MiB) });
  }
  for (const a of opts.avoid ?? []) busy.push(a);
  busy.sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));

  // The window every allocated byte must stay in.
  const winLo = near.end - reach > minAddr ? near.end - reach : minAddr;
  const winHi = near.start + reach < maxAddr ? near.start + reach : maxAddr;

  const found: { addr: bigint; dist: bigint }[] = [];
  let cursor = 0n;
  const consider = (gs: bigint, ge: bigint): void => {
    const s = alignUp(gs > winLo ? gs : winLo);
    const e = alignDown(ge < winHi ? ge : winHi);
    if (e - s < len) return;
    let addr: bigint;
    if (e <= near.start) addr = e - len; // below: as high as possible
    else if (s >= near.end) addr = s; // above: as low as possible
    else addr = s; // the gap overlaps near itself (near is not mapped): anywhere fits
    const dist = addr >= near.end ? addr - near.end : addr + len <= near.start ? near.start - (addr + len) : 0n;
    found.push({ addr, dist });
  };
  for (const b of busy) {
    if (b.start > cursor) consider(cursor, b.start);
    if (b.end > cursor) cursor = b.end;
  }
  if (cursor < maxAddr) consider(cursor, maxAddr);
  found.sort((a, b) => (a.dist < b.dist ? -1 : a.dist > b.dist ? 1 : 0));
  return found.map((f) => f.addr);
}

/** [start_brk, brk) of a process (fields 47 and 48 of /proc/PID/stat), or undefined on kernels that hide them. */
export function readBrk(pid: number, maps?: MapEntry[], start = startBrk(pid)): { start: bigint; end: bigint } | undefined {
  // stat has no current brk (field 48 is arg_start, on the stack), so the
  // end comes from the [heap] mapping.
  if (start === undefined || start === 0n) return undefined;
  const heap = (maps ?? readMaps(pid)).find((m) => m.path === '[heap]');
  return { start, end: heap && heap.end > start ? heap.end : start };
}

/** What findFreeGapsFor reads of a process besides its maps: constant for its life (or nearly), so a caller may keep them. */
export interface ProcessLimits {
  stackLimit: bigint | undefined;
  startBrk: bigint | undefined;
}

/**
 * The stack limit and the start of the heap of a process, from /proc but
 * for what the caller has already read: `known` start_brk (see
 * statFacts), `stackLimit` (see stackLimitOf).
 */
export function readLimits(pid: number, known?: { startBrk: bigint | undefined }, stackLimit?: bigint): ProcessLimits {
  return { stackLimit: stackLimit ?? readStackLimit(pid), startBrk: known ? known.startBrk : startBrk(pid) };
}

/** findFreeGaps for a live process, with its real stack limit and brk; one read of its maps. */
export function findFreeGapsFor(
  pid: number,
  near: { start: bigint; end: bigint },
  size: bigint | number,
  opts: GapOptions = {},
  limits: ProcessLimits = readLimits(pid),
  maps: MapEntry[] = readMaps(pid),
): bigint[] {
  const stackLimit = opts.stackLimit ?? limits.stackLimit ?? 8n * MiB;
  // An unlimited stack would reserve everything; cap what we keep free at 1 GiB.
  const capped = stackLimit > 1024n * MiB ? 1024n * MiB : stackLimit;
  return findFreeGaps(maps, near, size, {
    ...opts,
    stackLimit: capped,
    brk: opts.brk ?? readBrk(pid, maps, limits.startBrk),
  });
}
