/**
 * The live process target: a running Linux process seen through ptrace
 * and /proc. Implements the engine's Target interface; the engine never
 * sees a thread or a register.
 */
import { accessSync, constants } from 'node:fs';
import { fail, HotstackError } from '../../errors.js';
import { bytesEqual } from '../../elf/bytes.js';
import { arch } from '../../arch/index.js';
import type { AddrRange, BaseObject, ExternalSymbol, HookKind, HookResult, Perm, Quiesced, StateStore, Target } from '../../core/target.js';
import { findConflict } from './consistency.js';
import { lockProcess, type ProcessLock } from './lock.js';
import { findFreeGapsFor, readLimits, readMaps, type MapEntry, type ProcessLimits } from './maps.js';
import { hasSeccompFilter, procExists, processDead, readStatus } from './procfs.js';
import { ProcessMemory } from './memory.js';
import { loadObjects, unreadBase, unreadForTotal, type ProcessObject, type ProcessObjects } from './objects.js';
import { MAP_ANONYMOUS, MAP_FIXED_NOREPLACE, MAP_PRIVATE, PROT_EXEC, PROT_READ, PROT_WRITE, remoteMmap, remoteMunmap } from './remote/syscalls.js';
import { remoteCall } from './remote/calls.js';
import { RUNTIME_PAGE_SIZE, runtimePageOf, useRuntimePage } from './remote/runtime.js';
import { ProcessStore, removeStale } from './store.js';
import { StoppedProcess } from './threads.js';
import { coveredByAnonymous, unmapped } from './validate.js';
import { StateKeeper } from './keeper.js';

const PROT: Record<Perm, number> = { rx: PROT_READ | PROT_EXEC, r: PROT_READ, rw: PROT_READ | PROT_WRITE };
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
  private readonly ifuncCache = new Map<string, bigint>();
  /** Stack limit and heap start, read once per command (what keeps room for the stack and the heap). */
  private limits: ProcessLimits | undefined;
  /**
   * The process's maps during a stop, kept current with the mappings
   * hotstack makes in it (nothing else maps while its threads are
   * stopped): allocations in one stop read /proc/PID/maps once.
   */
  private stopMaps: MapEntry[] | null = null;
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

  private constructor(pid: number, lock: ProcessLock) {
    this.pid = pid;
    this.lock = lock;
    this.description = `process ${pid} (${lock.identity.comm})`;
    this.fileStore = new ProcessStore(lock.identity);
    this.fileStore.hold();
    this.mem = new ProcessMemory(pid);
    this.keeper = new StateKeeper(this.fileStore, {
      pid,
      mem: this.mem,
      objects: () => this.objects(),
      mapReadOnly: (size: number) =>
        this.stopped((p) => {
          this.trap(p);
          const base = this.objects()[0];
          return this.mapNear(p, size, PROT_READ, base ? base.range : { start: 0n, end: 0n });
        }, 'one'),
      free: (addr: bigint, size: number) => this.free(addr, size),
    });
    this.store = this.keeper;
  }

  /** What loading the state found worth telling a person (a state recovered from the process). */
  get notices(): readonly string[] {
    return this.keeper.notices;
  }

  /** Lock the process for this tool (EBUSY if another hotstack holds it). */
  static open(pid: number, lockTimeoutMs = 5000): ProcessTarget {
    checkAccess(pid);
    return new ProcessTarget(pid, lockProcess(pid, lockTimeoutMs));
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
    return (this.objectsCache ??= loadObjects(this.pid)).objects;
  }

  findBase(buildId: Uint8Array): BaseObject | undefined {
    const o = this.objects().find((x) => x.buildId && bytesEqual(x.buildId, buildId));
    if (o) return o;
    const big = this.objectsCache!.oversized.find((x) => x.buildId && bytesEqual(x.buildId, buildId));
    if (big) unreadBase(big, this.pid);
    return undefined;
  }

  bases(): BaseObject[] {
    return this.objects();
  }

  lookupExternal(name: string): ExternalSymbol | undefined {
    for (const o of this.objects()) {
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
      if (scope === 'all' && this.current.partial) fail('EIO', `internal: an operation needing every thread of process ${this.pid} stopped ran while only one was`);
      return fn(this.current);
    }
    return this.fileStore.deferSaves(() => this.stopOnce(fn, scope));
  }

  private stopOnce<T>(fn: (p: StoppedProcess) => T, scope: 'one' | 'all'): T {
    this.stopStart = performance.now();
    this.phase = { rec: {}, last: this.stopStart };
    const p = scope === 'one' ? StoppedProcess.stopOne(this.pid, STOP_TIMEOUT_MS) : StoppedProcess.stop(this.pid, STOP_TIMEOUT_MS);
    // Seizing (and listing threads) happens while they run: the pause starts at the first interrupt.
    if (p.interruptedAt) {
      this.lap('attach', p.interruptedAt);
      this.stopStart = p.interruptedAt;
    }
    this.lap('stop');
    this.current = p;
    try {
      return fn(p);
    } finally {
      this.current = null;
      this.stopMaps = null;
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

  allocate(size: number, perm: Perm, near: BaseObject): bigint {
    const range = (near as ProcessObject).range ?? { start: 0n, end: 0n };
    // Memory no thread can reach until a jump is written: only the thread that maps it is held.
    return this.stopped((p) => {
      this.trap(p); // the runtime page first: every later remote operation then runs from a self-restoring stub
      return this.mapNear(p, size, PROT[perm], range);
    }, 'one');
  }

  /** The maps to place an allocation in: kept for the stop while the process is stopped (see stopMaps). */
  private mapsInStop(): MapEntry[] {
    if (!this.current) return readMaps(this.pid);
    return (this.stopMaps ??= readMaps(this.pid));
  }

  private mapNear(p: StoppedProcess, size: number, prot: number, range: { start: bigint; end: bigint }): bigint {
    const hints = findFreeGapsFor(this.pid, range, size, { reach: REACH }, (this.limits ??= readLimits(this.pid)), this.mapsInStop());
    const store = this.fileStore;
    const pages = Number(alignPage(BigInt(size)));
    const perms = `${prot & PROT_READ ? 'r' : '-'}${prot & PROT_WRITE ? 'w' : '-'}${prot & PROT_EXEC ? 'x' : '-'}p`;
    const forget = (): void => {
      store.runtime.intent = undefined;
      store.saveRuntime();
    };
    for (const hint of hints.slice(0, 32)) {
      let addr: bigint;
      // Intent first: a tool killed after the mmap but before the caller records
      // the mapping leaves it in the file, and the next command frees it.
      store.runtime.intent = { addr: hint, size: pages, perms };
      store.saveRuntime();
      try {
        addr = remoteMmap(p, p.mainThread.tid, hint, size, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE);
      } catch (e) {
        forget();
        if (e instanceof HotstackError && e.errno === 'EEXIST') continue;
        if (e instanceof HotstackError && (e.errno === 'EPERM' || e.errno === 'EACCES')) throw this.explainMmapRefusal(e, prot);
        throw e;
      }
      // Kernels before 4.17 take MAP_FIXED_NOREPLACE as a mere hint.
      if (addr === hint) {
        store.runtime.intent = undefined; // the caller's next save records the mapping itself
        this.stopMaps?.push({ start: addr, end: addr + BigInt(pages), perms, offset: 0n, dev: '00:00', inode: 0n, path: '' });
        return addr;
      }
      this.stopMaps = null;
      remoteMunmap(p, p.mainThread.tid, addr, size);
      forget();
    }
    return fail('ENOMEM', `no free address space for ${size} bytes within +-2 GiB of ${this.pid}'s object at 0x${range.start.toString(16)}`);
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
    const known = runtimePageOf(p);
    if (known !== undefined) return known;
    const t = this.fileStore.runtime.trap;
    if (t !== undefined) {
      try {
        const m = readMaps(this.pid).find((x) => x.start <= t && t < x.end);
        // Only a private anonymous page of ours: the state file could name libc's code.
        const ok = m && t % BigInt(RUNTIME_PAGE_SIZE) === 0n && coveredByAnonymous([m], t, t + BigInt(RUNTIME_PAGE_SIZE), 'r-xp');
        if (ok && this.mem.read(t, 1)[0] === arch.process.trapByte) {
          useRuntimePage(p, t);
          return t;
        }
      } catch {
        /* unmapped: make a new one */
      }
    }
    const base = this.objects()[0];
    const page = this.mapNear(p, RUNTIME_PAGE_SIZE, PROT_READ | PROT_EXEC, base ? base.range : { start: 0n, end: 0n });
    this.fileStore.runtime.trap = page;
    this.fileStore.saveRuntime(); // recorded before it holds anything (an unrecorded intent is freed only while all zeros)
    this.mem.write(page, new Uint8Array(16).fill(arch.process.trapByte));
    useRuntimePage(p, page);
    return page;
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

  quiesce<T>(busy: AddrRange[], timeoutMs: number, fn: (q: Quiesced) => T): T {
    const start = performance.now();
    // Read before stopping: stacks are the only mappings the check needs, and a
    // thread whose stack is not listed (started since) makes it read them again.
    let maps = readMaps(this.pid);
    return this.stopped((p) => {
      let tries = 0;
      for (;;) {
        tries++;
        const conflict = findConflict(p, this.mem, maps, busy, () => (maps = readMaps(this.pid)));
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


/**
 * Fail early, with the real reason, when this user may not trace `pid`:
 * even `list` needs it, or it would show another user's empty state.
 */
function checkAccess(pid: number): void {
  if (procExists(pid) && processDead(pid)) {
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
