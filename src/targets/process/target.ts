/**
 * The live process target: a running Linux process seen through ptrace
 * and /proc. Implements the engine's Target interface; the engine never
 * sees a thread or a register.
 */
import { accessSync, constants } from 'node:fs';
import { ERRNO, fail, HotstackError } from '../../errors.js';
import { bytesEqual, toHex } from '../../elf/bytes.js';
import { testMode } from '../../core/fault.js';
import { arch } from '../../arch/index.js';
import type { AddrRange, AllocRequest, BaseObject, ExternalSymbol, HookKind, HookResult, Perm, Quiesced, StateStore, Target } from '../../core/target.js';
import { findConflict, returnAddressIn, stackSpan } from './consistency.js';
import { lockProcess, type ProcessLock } from './lock.js';
import { findFreeGapsFor, readLimits, readMaps, readMapsSnapshot, type MapEntry, type MapsSnapshot, type ProcessLimits } from './maps.js';
import { hasSeccompFilter, procExists, processDead, readStatus, statFacts, threadCount, type StatFacts } from './procfs.js';
import { ProcessMemory } from './memory.js';
import { loadObjects, unreadBase, unreadForTotal, type ProcessObject, type ProcessObjects } from './objects.js';
import { globalScope, linkMapOrder } from './linkmap.js';
import { MAP_ANONYMOUS, MAP_FIXED_NOREPLACE, MAP_PRIVATE, mmapFailure, mprotectFailure, PROT_EXEC, PROT_READ, PROT_WRITE, remoteMmap, remoteMunmap, remoteSyscall, remoteSyscalls, type SyscallResult } from './remote/syscalls.js';
import { remoteCall } from './remote/calls.js';
import { RUNTIME_PAGE_SIZE, runtimePageOf, runtimePageValid, useRuntimePage } from './remote/runtime.js';
import { ProcessStore, removeStale } from './store.js';
import { StoppedProcess } from './threads.js';
import * as pt from './ptrace.js';
import { coveredByAnonymous, unmapped } from './validate.js';
import { StateKeeper } from './keeper.js';

const PROT: Record<Perm, number> = { rx: PROT_READ | PROT_EXEC, r: PROT_READ, rw: PROT_READ | PROT_WRITE };
/** /proc/PID/maps permissions of each. */
const PERMS: Record<Perm, string> = { rx: 'r-xp', r: 'r--p', rw: 'rw-p' };
/** Code first in a span (the runtime page leads it), data last. */
const PERM_ORDER: Record<Perm, number> = { rx: 0, r: 1, rw: 2 };
/** How long a hook may run before it is taken to be stuck (e.g. on a lock a stopped thread holds). */
const HOOK_TIMEOUT_MS = Number(process.env.HOTSTACK_HOOK_TIMEOUT_MS) || 5000;
/** How long stopping every thread may take. */
const STOP_TIMEOUT_MS = 5000;
const REACH = 0x7fff0000n;
function alignPage(n: bigint): bigint {
  return (n + BigInt(RUNTIME_PAGE_SIZE) - 1n) & ~BigInt(RUNTIME_PAGE_SIZE - 1);
}

export class ProcessTarget implements Target {
  readonly kind = 'process' as const;
  readonly canRunHooks = true;
  readonly defaultTimeoutMs = 1000;
  readonly pid: number;
  readonly description: string;
  readonly store: StateStore;
  private readonly fileStore: ProcessStore;
  private readonly lock: ProcessLock;
  private readonly mem: ProcessMemory;
  private objectsCache: ProcessObjects | undefined;
  /** The objects in link-map order, once worked out (null: no link map; see lookupOrder). */
  private scopeCache: ProcessObject[] | null | undefined;
  private globalCache: ProcessObject[] | undefined;
  private readonly ifuncCache = new Map<string, bigint>();
  /** Stack limit and heap start, read once per command (what keeps room for the stack and the heap). */
  private limits: ProcessLimits | undefined;
  /** The stat facts read at open (null: unreadable): start_brk for the limits, startstack for the check. */
  private facts: StatFacts | null = null;
  /**
   * The process's maps during a stop, kept current with the mappings
   * hotstack makes in it (nothing else maps while its threads are
   * stopped): allocations in one stop read /proc/PID/maps once.
   */
  private stopMaps: MapEntry[] | null = null;
  /** See openSnapshot. */
  private snapshot: MapsSnapshot | null = null;
  /**
   * How long each stop lasted (ms), from stopping the first thread to
   * detaching the last: pause time. A quiesce that had to retry counts
   * only its last stop (the process ran in between).
   */
  readonly pauses: number[] = [];
  /**
   * Per stop, where its time went (ms): `attach` (listing and seizing the
   * threads, while they still run), `stop` (interrupt, wait, rescan),
   * `check` (consistency check: registers and stacks), `work` (what ran
   * while stopped: writes, hooks, remote calls), `detach`. For the
   * benchmark's breakdown.
   */
  readonly phases: Record<string, number>[] = [];
  private phase: { rec: Record<string, number>; last: number } | null = null;
  private stopStart = 0;
  /** The stopped process while an operation holds it (re-entrant). */
  private current: StoppedProcess | null = null;
  private readonly keeper: StateKeeper;
  /** The state file's saves are held (see flushState). */
  private holding = true;

  private constructor(pid: number, lock: ProcessLock, leaderAlive: boolean) {
    this.pid = pid;
    this.lock = lock;
    this.description = `process ${pid} (${lock.identity.comm})`;
    this.fileStore = new ProcessStore(lock.identity);
    this.fileStore.hold();
    this.mem = new ProcessMemory(pid, leaderAlive);
    this.keeper = new StateKeeper(this.fileStore, {
      pid,
      mem: this.mem,
      maps: () => this.openSnapshot().entries,
      objects: () => this.objects(),
      mapReadOnly: (size: number) =>
        this.stopped((p) => {
          this.trap(p);
          return this.mapSpan(p, [{ size, perm: 'r' }], this.homeRange(), false)[0]!;
        }, 'one'),
      free: (addr: bigint, size: number) => this.free(addr, size),
    });
    this.store = this.keeper;
  }

  /** What loading the state found worth telling a person (a state recovered from the process). */
  get notices(): readonly string[] {
    return this.keeper.notices;
  }

  /**
   * Lock the process for this tool (EBUSY if another hotstack holds it).
   * `known`: its stat facts, when the caller has just read them (a fleet
   * does, to tell an exit from a failure); else read here, once.
   */
  static open(pid: number, lockTimeoutMs = 5000, known?: StatFacts): ProcessTarget {
    const facts = known ?? statFactsOrNull(pid);
    checkAccess(pid, facts?.state);
    // The memory file is opened next (the state's copy is read at once): a leader seen alive
    // just now is the one to open it through.
    const t = new ProcessTarget(pid, lockProcess(pid, lockTimeoutMs, facts ?? undefined), facts !== null && !'ZX'.includes(facts.state));
    t.facts = facts;
    return t;
  }

  /** Release everything: detach (if still attached), close memory, unlock. */
  close(): void {
    try {
      this.current?.detach();
    } finally {
      this.current = null;
      this.flushHeld(false);
      this.mem.close();
      this.lock.release();
    }
  }

  /**
   * Write the state file now with the last state saved (it is held from
   * open: the copy in the process is written at every save, the file is
   * its cache). Commands call this once done, so that a failing write is
   * theirs to report; close() does it too, quietly, for anyone who did not.
   */
  flushState(): void {
    this.flushHeld(true);
  }

  private flushHeld(report: boolean): void {
    if (!this.holding) return;
    this.holding = false;
    try {
      this.fileStore.release();
    } catch (e) {
      if (report) throw e;
    }
  }

  private objects(): ProcessObject[] {
    if (!this.objectsCache) {
      this.objectsCache = loadObjects(this.pid, undefined, this.openSnapshot());
      for (const o of this.objectsCache.objects) o.lookupScope = () => this.globalScope();
    }
    return this.objectsCache.objects;
  }

  /**
   * The maps read once for what a command needs of them before its first
   * stop (its state and its objects); a stop makes them stale (we map).
   */
  private openSnapshot(): MapsSnapshot {
    return (this.snapshot ??= readMapsSnapshot(this.pid));
  }

  findBase(buildId: Uint8Array): BaseObject | undefined {
    const all = this.objects().filter((x) => x.buildId && bytesEqual(x.buildId, buildId));
    if (all.length > 1) {
      // Copies of one build (a library bundled by two plugins): a payload is linked against one.
      fail('EOPNOTSUPP', `${all.length} objects with build-id ${toHex(buildId)} are mapped in process ${this.pid} (${all.map((x) => x.path).join(', ')}): a payload is linked against one of them and would leave the other${all.length > 2 ? 's' : ''} running the old code`);
    }
    const o = all[0];
    if (o) return o;
    const big = this.objectsCache!.oversized.find((x) => x.buildId && bytesEqual(x.buildId, buildId));
    if (big) unreadBase(big, this.pid);
    return undefined;
  }

  bases(): BaseObject[] {
    return this.objects();
  }

  /**
   * The objects in the order the dynamic linker looks symbols up (see
   * linkMapOrder), else in address order: an external of a payload must be
   * what the program's own calls are bound to (an LD_PRELOAD allocator's
   * malloc, not libc's).
   */
  private lookupOrder(): ProcessObject[] {
    return this.linkMap() ?? this.objects();
  }

  /** The objects in link-map order (read once), or undefined when the link map cannot be read. */
  private linkMap(): ProcessObject[] | undefined {
    if (this.scopeCache === undefined) this.scopeCache = linkMapOrder(this.objects(), (a, n) => this.mem.read(a, n)) ?? null;
    return this.scopeCache ?? undefined;
  }

  /** The global lookup scope (see globalScope), or undefined without a link map. */
  private globalScope(): ProcessObject[] | undefined {
    const order = this.linkMap();
    return order && (this.globalCache ??= globalScope(order));
  }

  lookupExternal(name: string): ExternalSymbol | undefined {
    for (const o of this.lookupOrder()) {
      const s = o.dynamicSymbol(name);
      if (!s) continue;
      const addr = s.value + o.bias;
      return { addr: s.isIfunc ? this.resolveIfunc(name, addr) : addr, object: o.path };
    }
    return undefined;
  }

  externalScope(): string {
    return `another object loaded in the process${this.objectsCache ? unreadForTotal(this.objectsCache) : ''}`;
  }

  /** An IFUNC symbol's value is a resolver: run it in the target, as the dynamic linker did. */
  private resolveIfunc(name: string, resolver: bigint): bigint {
    const hit = this.ifuncCache.get(name);
    if (hit !== undefined) return hit;
    // A resolver reads CPU features: it runs on one held thread while the others go on.
    const impl = this.stopped((p) => {
      const trap = this.trap(p);
      return BigInt.asUintN(64, remoteCall(p, p.mainThread.tid, resolver, [], trap, HOOK_TIMEOUT_MS).value);
    }, 'one');
    this.ifuncCache.set(name, impl);
    return impl;
  }

  read(addr: bigint, len: number): Uint8Array {
    return this.mem.read(addr, len);
  }

  write(addr: bigint, data: Uint8Array): void {
    this.mem.write(addr, data);
  }

  /**
   * Run `fn` with the process stopped: every thread (`all`), or only the
   * thread remote operations run on (`one`), for work on memory no thread
   * can reach yet, while the others run on. Re-entrant (all threads held
   * serve an operation needing one); detaches on the way out.
   */
  private stopped<T>(fn: (p: StoppedProcess) => T, scope: 'one' | 'all' = 'all'): T {
    if (this.current) {
      if (scope === 'all' && this.current.partial) return this.withAllThreads(this.current, fn);
      return fn(this.current);
    }
    return this.fileStore.deferSaves(() => this.stopOnce(fn, scope));
  }

  /**
   * An action inside a batch that holds one thread (a fleet's load: the
   * upload, then the apply): the other threads are stopped for it only, and
   * run on again after, as in a stop of its own, without letting the held
   * thread go and stopping it again.
   */
  private withAllThreads<T>(p: StoppedProcess, fn: (p: StoppedProcess) => T): T {
    this.stopMaps = null;
    p.stopRest(STOP_TIMEOUT_MS);
    try {
      return fn(p);
    } finally {
      this.stopMaps = null;
      p.releaseRest();
    }
  }

  private stopOnce<T>(fn: (p: StoppedProcess) => T, scope: 'one' | 'all'): T {
    // The maps read at open serve the first stop too (one read less for the objects, one for
    // the placement): a range the program mapped since only makes that hint EEXIST
    // (MAP_FIXED_NOREPLACE), and the next is tried. After a stop they are stale (we map).
    const open = this.snapshot;
    this.stopStart = performance.now();
    this.phase = { rec: {}, last: this.stopStart };
    // The lock checked that the pid is a process's (see lockName): the stops need not.
    const p = scope === 'one' ? StoppedProcess.stopOne(this.pid, STOP_TIMEOUT_MS, this.mem, true) : StoppedProcess.stop(this.pid, STOP_TIMEOUT_MS, this.mem, true);
    // Seizing (and listing threads) happens while they run: the pause starts at the first interrupt.
    if (p.interruptedAt) {
      this.lap('attach', p.interruptedAt);
      this.stopStart = p.interruptedAt;
    }
    this.lap('stop');
    this.current = p;
    this.stopMaps = open ? [...open.entries] : null;
    try {
      return fn(p);
    } finally {
      this.current = null;
      this.stopMaps = null;
      this.snapshot = null;
      this.lap('work');
      p.detach();
      this.lap('detach');
      this.pauses.push(performance.now() - this.stopStart);
      this.phases.push(this.phase.rec);
      this.phase = null;
    }
  }

  /** Charge the time since the last lap to `name` (phases). */
  private lap(name: string, now = performance.now()): void {
    if (!this.phase) return;
    this.phase.rec[name] = (this.phase.rec[name] ?? 0) + now - this.phase.last;
    this.phase.last = now;
  }

  batch<T>(fn: () => T): T {
    return this.stopped(() => fn(), 'one');
  }

  allocate(reqs: AllocRequest[], near: BaseObject): bigint[] {
    const range = (near as ProcessObject).range ?? { start: 0n, end: 0n };
    // Memory no thread can reach until a jump is written: only the thread that maps it is held.
    return this.stopped((p) => {
      // A process's first upload also needs the runtime page and the state's
      // copy: all are one span, mapped by one mmap and an mprotect per
      // further permission (one batch, see remoteSyscalls).
      const makesPage = this.knownRuntimePage(p) === undefined;
      const mirror = this.keeper.mirrorWanted();
      const parts: AllocRequest[] = [
        ...(makesPage ? [{ size: RUNTIME_PAGE_SIZE, perm: 'rx' as const }] : []),
        ...reqs.map((r) => ({ size: Number(alignPage(BigInt(r.size))), perm: r.perm })),
        ...(mirror ? [{ size: mirror, perm: 'r' as const }] : []),
      ];
      const addrs = this.mapSpan(p, parts, range, makesPage);
      if (mirror) this.keeper.adoptMirror(addrs[addrs.length - 1]!, mirror);
      const first = makesPage ? 1 : 0;
      return addrs.slice(first, first + reqs.length);
    }, 'one');
  }

  /** Where the runtime page and the state's copy go: near the executable (any address will do). */
  private homeRange(): { start: bigint; end: bigint } {
    const base = this.objects()[0];
    return base ? base.range : { start: 0n, end: 0n };
  }

  /** The maps to place an allocation in: kept for the stop while the process is stopped (see stopMaps). */
  private mapsInStop(): MapEntry[] {
    if (!this.current) return readMaps(this.pid);
    return (this.stopMaps ??= readMaps(this.pid));
  }

  /**
   * Map `parts` as one span within reach of `range`, parts of one
   * permission next to each other: one mmap of the whole, then an mprotect
   * per further permission, in one stub run. `makesPage`: parts[0] is the
   * runtime page to make (that mmap borrows a system call instruction of
   * the target; the mprotects then run from the new page). Every part is
   * announced in the state file before the mmap (a killed tool's leftovers
   * are freed by the next command, see StateKeeper.repairIntent). Returns
   * each part's address; maps all or nothing.
   */
  private mapSpan(p: StoppedProcess, parts: AllocRequest[], range: { start: bigint; end: bigint }, makesPage: boolean): bigint[] {
    const order = parts.map((_, i) => i).sort((a, b) => PERM_ORDER[parts[a]!.perm] - PERM_ORDER[parts[b]!.perm] || a - b);
    const offsets: number[] = [];
    const segments: { off: number; size: number; perm: Perm }[] = [];
    let total = 0;
    for (const i of order) {
      const { size, perm } = parts[i]!;
      offsets[i] = total;
      const last = segments[segments.length - 1];
      if (last && last.perm === perm) last.size += size;
      else segments.push({ off: total, size, perm });
      total += size;
    }
    const gaps = (): bigint[] => findFreeGapsFor(this.pid, range, total, { reach: REACH }, (this.limits ??= readLimits(this.pid, this.facts ?? undefined, pt.stackLimitOf(this.pid))), this.mapsInStop());
    let hints = gaps();
    const store = this.fileStore;
    const oldTrap = store.runtime.trap;
    let pageMade = false;
    const forget = (): void => {
      store.runtime.intents = undefined;
      if (!pageMade) store.runtime.trap = oldTrap;
      store.saveRuntime();
    };
    for (let attempt = 0; attempt < 32 && hints.length; attempt++) {
      const hint = hints.shift()!;
      if (attempt === 0 && testMode() && process.env.HOTSTACK_TEST_TAKE_HINT === '1') this.takeForTest(p, hint);
      // Intents first (with the runtime page about to be made): a tool killed after the
      // mmap but before the caller records the mapping leaves them in the file.
      store.runtime.intents = order.map((i) => ({ addr: hint + BigInt(offsets[i]!), size: parts[i]!.size, perms: PERMS[parts[i]!.perm] }));
      if (makesPage) store.runtime.trap = hint;
      store.saveRuntime();
      let placed: boolean;
      try {
        placed = this.mapSegments(p, hint, total, segments, makesPage, () => (pageMade = true));
      } catch (e) {
        forget();
        if (e instanceof HotstackError && (e.errno === 'EPERM' || e.errno === 'EACCES')) throw this.explainMmapRefusal(e, PROT[segments[0]!.perm]);
        throw e;
      }
      if (!placed) {
        forget();
        // Taken since the maps were read (they may be the ones read at open): read them again.
        this.stopMaps = null;
        hints = gaps().filter((h) => h !== hint);
        continue;
      }
      store.runtime.intents = undefined; // the caller's next save records the mappings themselves
      for (const g of segments) {
        const start = hint + BigInt(g.off);
        this.stopMaps?.push({ start, end: start + BigInt(g.size), perms: PERMS[g.perm], offset: 0n, dev: '00:00', inode: 0n, path: '' });
      }
      return parts.map((_, i) => hint + BigInt(offsets[i]!));
    }
    return fail('ENOMEM', `no free address space for ${total} bytes within +-2 GiB of ${this.pid}'s object at 0x${range.start.toString(16)}`);
  }

  /** Test switch: the program maps a page at `hint` after hotstack read its maps (see mapSpan). */
  private takeForTest(p: StoppedProcess, hint: bigint): void {
    remoteMmap(p, p.mainThread.tid, hint, RUNTIME_PAGE_SIZE, 0, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE);
  }

  /**
   * The system calls of mapSpan at `hint`: false when the hint was taken
   * meanwhile (the caller tries the next). On a failed mprotect the span
   * is unmapped again (but a runtime page made on the way is kept: it is
   * recorded and in use) and the error thrown.
   */
  private mapSegments(p: StoppedProcess, hint: bigint, total: number, segments: { off: number; size: number; perm: Perm }[], makesPage: boolean, onPage: () => void): boolean {
    const tid = p.mainThread.tid;
    const sys = arch.process.sys;
    const flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE;
    const prot0 = PROT[segments[0]!.perm];
    const mmap = { nr: BigInt(sys.mmap), args: [hint, BigInt(total), BigInt(prot0), BigInt(flags), -1n, 0n], expect: hint };
    const protects = segments.slice(1).map((g) => ({ nr: BigInt(sys.mprotect), args: [hint + BigInt(g.off), BigInt(g.size), BigInt(PROT[g.perm])], expect: 0n }));
    let results: SyscallResult[];
    if (makesPage) {
      const r = remoteSyscall(p, tid, sys.mmap, mmap.args);
      results = [r];
      if (!r.errno && BigInt.asUintN(64, r.value) === hint) {
        this.mem.write(hint, new Uint8Array(16).fill(arch.process.trapByte));
        useRuntimePage(p, hint);
        onPage();
        results.push(...remoteSyscalls(p, tid, protects));
      }
    } else {
      results = remoteSyscalls(p, tid, [mmap, ...protects]);
    }
    const m = results[0]!;
    if (m.errno === ERRNO.EEXIST) return false;
    if (m.errno) mmapFailure(this.pid, hint, total, prot0, flags, m.errno);
    const got = BigInt.asUintN(64, m.value);
    if (got !== hint) {
      // Kernels before 4.17 take MAP_FIXED_NOREPLACE as a mere hint (mapSpan reads the maps again).
      remoteMunmap(p, tid, got, total);
      return false;
    }
    const failed = results.findIndex((r, i) => i > 0 && r.errno);
    if (failed > 0 || results.length < 1 + protects.length) {
      const keep = makesPage ? RUNTIME_PAGE_SIZE : 0;
      if (total > keep) remoteMunmap(p, tid, hint + BigInt(keep), total - keep);
      const g = segments[Math.max(failed, 1)]!;
      mprotectFailure(this.pid, hint + BigInt(g.off), g.size, PROT[g.perm], results[failed]?.errno ?? ERRNO.EIO);
    }
    return true;
  }

  private explainMmapRefusal(e: HotstackError, prot: number): HotstackError {
    if (!(prot & PROT_EXEC)) return e;
    let seccomp = false;
    try {
      seccomp = hasSeccompFilter(readStatus(this.pid));
    } catch {
      /* gone */
    }
    const why = seccomp
      ? 'it runs under a seccomp filter (Seccomp: 2 in /proc/PID/status) that forbids executable mappings'
      : 'a seccomp filter or a W^X policy (MemoryDenyWriteExecute) forbids executable mappings in it';
    return new HotstackError(e.errno, `process ${this.pid} refused to map executable memory for the payload (${e.errno}): ${why}; payloads cannot be loaded into this process`);
  }

  free(addr: bigint, size: number): void {
    const end = addr + BigInt(size);
    const maps = readMaps(this.pid);
    // Never unmap what is not ours: a program's text or data would vanish under it.
    if (!coveredByAnonymous(maps, addr, end) && !unmapped(maps, addr, end)) {
      fail('EPERM', `refusing to unmap 0x${addr.toString(16)} (+${size}) in process ${this.pid}: it is not memory hotstack mapped (a private anonymous mapping)`);
    }
    // Unmapping code threads may run is done inside the consistency-checked stop (unload); here, one thread is enough.
    this.stopped((p) => {
      this.trap(p);
      this.stopMaps = null;
      remoteMunmap(p, p.mainThread.tid, addr, size);
    }, 'one');
  }

  /**
   * The runtime page: one RX page per process, remembered in the state file.
   * Its first bytes are int3 (the trap of remote calls made without stubs),
   * the rest holds the self-restoring stubs of remote operations (see
   * useRuntimePage): created by the first remote operation of a session
   * (that one mmap still borrows a syscall instruction of the target), then
   * registered with `p` so that every later operation uses stubs.
   */
  private trap(p: StoppedProcess): bigint {
    return this.knownRuntimePage(p) ?? this.mapSpan(p, [{ size: RUNTIME_PAGE_SIZE, perm: 'rx' }], this.homeRange(), true)[0]!;
  }

  /** The runtime page of this stop, or the one the state file names once checked (then registered with `p`). */
  private knownRuntimePage(p: StoppedProcess): bigint | undefined {
    const known = runtimePageOf(p);
    if (known !== undefined) return known;
    const t = this.fileStore.runtime.trap;
    if (t === undefined || !runtimePageValid(this.mapsInStop(), this.mem, t)) return undefined;
    useRuntimePage(p, t);
    return t;
  }

  private call(p: StoppedProcess, kind: HookKind, fn: bigint, arg: bigint): HookResult {
    try {
      return remoteCall(p, p.mainThread.tid, fn, [arg], this.trap(p), HOOK_TIMEOUT_MS).int;
    } catch (e) {
      if (e instanceof HotstackError) throw new HotstackError(e.errno, `${kind} hook at 0x${fn.toString(16)}: ${e.message}`);
      throw e;
    }
  }

  /**
   * Pre/post hooks run outside the quiesced window: only the thread that
   * runs the hook is held, the others keep running, so the hook may wait
   * for locks they hold.
   */
  callHook(kind: HookKind, fn: bigint, arg: bigint): HookResult {
    return this.stopped((p) => {
      this.trap(p);
      return this.call(p, kind, fn, arg);
    }, 'one');
  }

  /**
   * Once per thread, before its first consistency check: run what the check
   * runs inside the stop (the stack scan both ways, a memory read, the
   * thread count, a wait status decoded) on a few harmless bytes. A fresh
   * command ran all of it for the first time inside the stop, where the
   * first run of Buffer and fs paths costs most: its stop took 0.63 ms
   * against 0.42 ms after this (medians of 20, bundles with code caches).
   */
  private rehearseCheck(busy: AddrRange[]): void {
    if (rehearsed) return;
    rehearsed = true;
    try {
      const b = Buffer.alloc(64);
      returnAddressIn(b, busy.map((r) => Number(r.start)), busy.map((r) => Number(r.end)));
      returnAddressIn(b, [0x1000], [0x2000]);
      stackSpan(0x1000n, { start: 0n, end: 0x2000n }, 0x1800n);
      pt.decodeStatus(0x857f);
      threadCount(this.pid);
      if (busy[0]) bytesEqual(this.mem.read(busy[0].start, 1), b.subarray(0, 1));
    } catch {
      /* only a rehearsal: the check itself says what is wrong */
    }
  }

  quiesce<T>(busy: AddrRange[], timeoutMs: number, fn: (q: Quiesced) => T): T {
    const start = performance.now();
    // Read before stopping (or at open, when still current: a fleet's load): stacks are the
    // only mappings the check needs, and a thread whose stack is not listed (started since,
    // or grown past it) makes it read them again.
    let maps = this.snapshot?.entries ?? readMaps(this.pid);
    this.rehearseCheck(busy);
    return this.stopped((p) => {
      let tries = 0;
      for (;;) {
        tries++;
        const conflict = findConflict(p, this.mem, maps, busy, () => (maps = readMaps(this.pid)), this.facts?.startStack);
        this.lap('check');
        if (!conflict) return fn({ tries, callHook: (kind, f, arg) => this.call(p, kind, f, arg) });
        const elapsed = performance.now() - start;
        if (elapsed >= timeoutMs) {
          fail('EBUSY', `no safe moment within ${timeoutMs} ms (${tries} tries): thread ${conflict.thread} ${conflict.how}; nothing was changed`);
        }
        // Back off a little more each time, never past the deadline.
        p.resume();
        p.serviceSignals(Math.min(Math.max(1, tries), 20, Math.max(1, timeoutMs - elapsed)));
        this.stopStart = performance.now();
        // Only the final stop counts, as for pauses.
        this.phase = { rec: {}, last: this.stopStart };
        p.restop(STOP_TIMEOUT_MS);
        this.lap('stop');
      }
    });
  }
}


/** This thread has run the check outside a stop once (see ProcessTarget.rehearseCheck). */
let rehearsed = false;

/** The stat facts of `pid`, or null when they cannot be read (checkAccess says why). */
function statFactsOrNull(pid: number): StatFacts | null {
  try {
    return statFacts(pid);
  } catch {
    return null;
  }
}

/**
 * Fail early, with the real reason, when this user may not trace `pid`:
 * even `list` needs it, or it would show another user's empty state.
 * `state`: the main thread's scheduler state, when just read.
 */
function checkAccess(pid: number, state?: string): void {
  if (procExists(pid) && processDead(pid, state)) {
    fail('ESRCH', `process ${pid} has exited (a zombie until its parent reaps it); there is nothing to patch`);
  }
  try {
    accessSync(`/proc/${pid}/mem`, constants.R_OK | constants.W_OK);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') {
      try {
        removeStale(); // its state, if any, died with it
      } catch {
        /* a state directory in a bad shape is reported by the commands that use it */
      }
      fail('ESRCH', `process ${pid} does not exist`);
    }
    fail('EPERM', `not permitted to trace process ${pid}: run hotstack as root (or with CAP_SYS_PTRACE) or as the process's user, and check /proc/sys/kernel/yama/ptrace_scope`);
  }
}
