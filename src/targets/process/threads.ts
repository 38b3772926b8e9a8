/**
 * Stopping the world of a live process: every thread seized with
 * PTRACE_SEIZE and stopped with PTRACE_INTERRUPT (never PTRACE_ATTACH, whose
 * SIGSTOP could be left behind), kept stopped while the engine works, then
 * resumed or detached, with no signal lost on the way.
 */
import { fail, isHotstackError } from '../../errors.js';
import * as pt from './ptrace.js';
import { ProcessMemory } from './memory.js';
import { checkLeaderStatus, listTids, notRunning, readComm, readStatus, threadCount, threadListed, threadSchedState, tracerOf } from './procfs.js';

/** A signal we took out of the kernel's queue (a signal-delivery-stop) and owe the thread. */
export interface OwedSignal {
  signal: number;
  /** Original siginfo, so the handler sees the real sender and code. */
  siginfo: Buffer | null;
}

/**
 * Scans of the task directory, after one that found nothing new but fewer
 * threads than the kernel counts (see stopAll), made at once before
 * napping between them: an exiting thread is usually reaped within them.
 */
const QUICK_RECOUNTS = 4;

export type ThreadState = 'running' | 'stopped' | 'gone' | 'detached';

/** One thread of a stopped process. */
export class StoppedThread {
  readonly tid: number;
  private readonly pid: number;
  private comm: string | undefined;
  state: ThreadState = 'running';
  /** Registers at the latest stop (remote operations restore them exactly, so they stay valid). */
  regs: pt.Regs | null = null;
  /** The latest stop was a group-stop (the process is SIGSTOPped): resume keeps it so. */
  groupStop = false;
  /** Signals to deliver when the thread runs again. */
  readonly owed: OwedSignal[] = [];

  constructor(tid: number, pid: number) {
    this.tid = tid;
    this.pid = pid;
  }

  /** /proc/PID/task/TID/comm, read when first asked: not while stopping the process, where it would lengthen the pause. */
  get name(): string {
    return (this.comm ??= readComm(this.pid, this.tid) ?? '?');
  }

  /** "1234 (worker)" for messages. */
  get label(): string {
    return `${this.tid} (${this.name})`;
  }
}

const DEFAULT_TIMEOUT_MS = 5000;
/** How long a re-injected signal may take to reach its delivery stop. */
const REDELIVER_MS = 500;

/** ESRCH for a pid that does not exist, EINVAL for a thread id that is not a process id (/proc/TID works for those too). */
function checkProcessId(pid: number): void {
  if (!Number.isInteger(pid) || pid <= 0) fail('EINVAL', `invalid process id ${pid}`);
  let status: string;
  try {
    status = readStatus(pid);
  } catch {
    fail('ESRCH', `process ${pid} does not exist`);
  }
  checkLeaderStatus(pid, status);
}

/** " (traced by PID N: name)" when /proc says who the other tracer is. */
function tracerHint(pid: number, tid: number): string {
  try {
    const tracer = tracerOf(readStatus(pid, tid)) ?? 0;
    if (tracer === 0) return '';
    const who = tracer === process.pid ? 'this hotstack itself' : (readComm(tracer, tracer) ?? '?');
    return ` (thread ${tid} is traced by process ${tracer}: ${who})`;
  } catch {
    return '';
  }
}

/**
 * True when the thread-group leader called pthread_exit while other threads
 * run on: it is a zombie whose exit is reported (to its tracer too) only
 * with the whole group's, so waiting for it would hang. (When the whole
 * process is exiting, every thread is a zombie and the reports do come.)
 */
export function leaderLeftEarly(pid: number): boolean {
  if (threadSchedState(pid, pid) !== 'Z') return false;
  try {
    return listTids(pid).some((tid) => tid !== pid && !notRunning(threadSchedState(pid, tid)));
  } catch {
    return false;
  }
}

function isErr(e: unknown, errno: string): boolean {
  return isHotstackError(e) && e.errno === errno;
}

/**
 * A process whose threads are all attached by us. Created stopped by
 * `StoppedProcess.stop()`. Always end with `detach()` (idempotent, safe
 * after any error), e.g. in a `finally`.
 */
export class StoppedProcess {
  readonly pid: number;
  /** /proc/PID/mem of the process, closed by detach() unless the caller lent it. */
  readonly memory: ProcessMemory;
  private readonly ownsMemory: boolean;
  private readonly map = new Map<number, StoppedThread>();
  private exited = false;
  private done = false;
  /** Threads whose seize failed with ESRCH, and how often (see stopAll). */
  private readonly unseizable = new Map<number, number>();
  /** When the first thread was interrupted (performance.now()), 0 before: where the pause begins, for the benchmark's phases. */
  interruptedAt = 0;
  /** Only one thread is held (stopOne): the others run on. */
  private single = false;

  private constructor(pid: number, memory: ProcessMemory | undefined) {
    this.pid = pid;
    this.ownsMemory = !memory;
    this.memory = memory ?? new ProcessMemory(pid);
  }

  /**
   * Attach to and stop every thread of `pid`, rescanning /proc/PID/task until
   * no new thread appears. On any failure everything is detached again and
   * the error is thrown: ESRCH when the process exited, EPERM when tracing is
   * not allowed, ETIMEDOUT when a thread would not stop (uninterruptible sleep).
   */
  static stop(pid: number, timeoutMs = DEFAULT_TIMEOUT_MS, memory?: ProcessMemory, checked = false): StoppedProcess {
    return StoppedProcess.attach(pid, timeoutMs, false, memory, checked);
  }

  /**
   * Attach to and stop one thread of `pid` (the leader, or another when it
   * has exited), leaving the others running: enough for remote operations
   * on memory no thread can reach yet (mapping a payload's memory, running
   * IFUNC resolvers). Errors as for stop(). restop() stops that thread again.
   */
  static stopOne(pid: number, timeoutMs = DEFAULT_TIMEOUT_MS, memory?: ProcessMemory, checked = false): StoppedProcess {
    return StoppedProcess.attach(pid, timeoutMs, true, memory, checked);
  }

  /**
   * `memory`: the caller's open /proc/PID/mem to use (it stays open after
   * detach). `checked`: the caller has made sure `pid` is a process, not
   * another thread's id (a process target does when it locks the process:
   * one read of its status less per stop).
   */
  private static attach(pid: number, timeoutMs: number, single: boolean, memory: ProcessMemory | undefined, checked: boolean): StoppedProcess {
    if (!checked) checkProcessId(pid);
    const p = new StoppedProcess(pid, memory);
    p.single = single;
    try {
      p.stopAll(timeoutMs);
    } catch (e) {
      p.detach();
      throw e;
    }
    return p;
  }

  /** True when only one thread is held (stopOne): the others may be anywhere. */
  get partial(): boolean {
    return this.single;
  }

  /** Threads currently stopped under our control (ascending tid). */
  get threads(): StoppedThread[] {
    return [...this.map.values()].filter((t) => t.state === 'stopped').sort((a, b) => a.tid - b.tid);
  }

  /** True until detach(). */
  get attached(): boolean {
    return !this.done;
  }

  /** A stopped thread by tid; ESRCH if it is not one of ours (or gone). */
  thread(tid: number): StoppedThread {
    const t = this.map.get(tid);
    if (!t || t.state === 'gone') fail('ESRCH', `thread ${tid} of process ${this.pid} exited or is not attached`);
    if (t.state !== 'stopped') fail('EINVAL', `thread ${t.label} of process ${this.pid} is not stopped`);
    return t;
  }

  /** The thread used for remote operations: the thread-group leader, or the first stopped thread if the leader is a zombie. */
  get mainThread(): StoppedThread {
    const leader = this.map.get(this.pid);
    if (leader && leader.state === 'stopped') return leader;
    const any = this.threads[0];
    if (!any) fail('ESRCH', `process ${this.pid} has no stopped thread`);
    return any;
  }

  /** Note a signal taken out of the queue during a remote operation, to deliver it on resume/detach. */
  owe(tid: number, signal: number, siginfo: Buffer | null): void {
    this.map.get(tid)?.owed.push({ signal, siginfo });
  }

  /** Mark a thread as gone after it reported its exit; the leader's exit means the whole process is gone. */
  noteExit(tid: number): void {
    const t = this.map.get(tid);
    if (t) t.state = 'gone';
    if (tid === this.pid) this.exited = true;
  }

  /** The leader called pthread_exit: a zombie whose exit is reported only with the whole group's, so never wait for it. */
  private isZombieLeader(t: StoppedThread): boolean {
    return t.tid === this.pid && leaderLeftEarly(this.pid);
  }

  /** Mark one thread as gone without concluding the process is (a leader that called pthread_exit). */
  markGone(tid: number): void {
    const t = this.map.get(tid);
    if (t) t.state = 'gone';
  }

  /** True once the process has exited (its threads are all gone or zombies, or it was reaped). */
  isGone(): boolean {
    if (this.exited) return true;
    let tids: number[];
    try {
      tids = listTids(this.pid);
    } catch {
      tids = [];
    }
    if (tids.every((tid) => notRunning(threadSchedState(this.pid, tid)))) this.exited = true;
    return this.exited;
  }

  /** ESRCH "process N exited" if it has; turns a thread-level ESRCH into the message a person expects. */
  assertAlive(): void {
    if (this.isGone()) fail('ESRCH', `process ${this.pid} exited`);
  }

  /** Re-read the registers of a stopped thread. */
  refreshRegs(tid: number): pt.Regs {
    const t = this.thread(tid);
    t.regs = pt.getRegs(tid);
    return t.regs;
  }

  // -------------------------------------------------------------------------

  /**
   * Wait until `t` is in an interrupt/group stop. Signal-delivery-stops met
   * on the way are owed to the thread and suppressed for now (restarting
   * lets it reach the pending interrupt stop before running any code).
   * Returns false on timeout.
   */
  private awaitStop(t: StoppedThread, deadline: number): boolean {
    for (;;) {
      let st: pt.WaitStatus | null;
      try {
        st = pt.waitFor(t.tid, Math.max(0, Math.min(deadline - performance.now(), 100)));
      } catch (e) {
        if (!isErr(e, 'ESRCH')) throw e;
        this.noteExit(t.tid);
        return true;
      }
      if (!st) {
        if (performance.now() >= deadline) return false;
        // A process that died without a report to us (a zombie): no stop will come.
        if (this.isGone()) {
          this.noteExit(t.tid);
          return true;
        }
        // Nor from a leader that called pthread_exit while resumed: a zombie whose exit is reported
        // only with the whole group's (and PTRACE_INTERRUPT does not fail on it). Looked at only
        // after a fruitless wait: reading /proc for it before every stop would lengthen the pause.
        if (this.isZombieLeader(t)) {
          t.state = 'gone';
          return true;
        }
        continue;
      }
      switch (st.kind) {
        case 'exited':
        case 'killed':
          this.noteExit(t.tid);
          return true;
        case 'event-stop':
          try {
            t.regs = pt.getRegs(t.tid);
          } catch (e) {
            if (!isErr(e, 'ESRCH')) throw e;
            continue; // killed meanwhile: its exit report follows
          }
          t.state = 'stopped';
          t.groupStop = st.groupStop;
          return true;
        case 'signal': {
          let info: Buffer | null = null;
          try {
            info = pt.getSiginfo(t.tid);
          } catch {
            /* keep the number at least */
          }
          t.owed.push({ signal: st.signal, siginfo: info });
          this.restart(t.tid, 0);
          continue;
        }
        case 'event':
          this.restart(t.tid, 0);
          continue;
      }
    }
  }

  /** PTRACE_CONT that tolerates a thread killed under us (its exit is reported by the next wait). */
  private restart(tid: number, sig: number): void {
    try {
      pt.cont(tid, sig);
    } catch (e) {
      if (!isErr(e, 'ESRCH')) throw e;
    }
  }

  private stoppedCount(): number {
    let n = 0;
    for (const t of this.map.values()) if (t.state === 'stopped') n++;
    return n;
  }

  private stopAll(timeoutMs: number): void {
    const deadline = performance.now() + timeoutMs;
    let recounts = 0;
    // Threads already held (stopRest after stopOne): when the kernel counts no other, there is
    // nobody to list (a single-threaded process, the usual fleet target: one readdir less).
    if (!this.single && !this.exited) {
      const held = this.stoppedCount();
      const counted = held > 0 ? threadCount(this.pid) : null;
      if (counted !== null && counted <= held) return;
    }
    for (;;) {
      if (this.exited) fail('ESRCH', `process ${this.pid} exited`);
      let fresh = 0;
      const listed = listTids(this.pid);
      // One thread only: the leader first (the usual mainThread), else any other.
      for (const tid of this.single ? [this.pid, ...listed.filter((t) => t !== this.pid)] : listed) {
        if (this.map.has(tid)) continue;
        if (this.single && [...this.map.values()].some((t) => t.state !== 'gone')) break;
        try {
          pt.seize(tid);
        } catch (e) {
          if (isErr(e, 'ESRCH')) {
            // Vanished between listing and seizing, or still being created by a
            // clone: while it is listed, scan again (a bounded number of times).
            const n = (this.unseizable.get(tid) ?? 0) + 1;
            this.unseizable.set(tid, n);
            if (n < 50 && threadListed(this.pid, tid)) fresh++;
            continue;
          }
          // A zombie leader (it called pthread_exit) cannot be seized: EPERM. Skip it.
          if (isErr(e, 'EPERM') && notRunning(threadSchedState(this.pid, tid))) continue;
          if (isErr(e, 'EPERM')) fail('EPERM', pt.notPermitted(this.pid) + tracerHint(this.pid, tid));
          throw e;
        }
        this.map.set(tid, new StoppedThread(tid, this.pid));
        fresh++;
      }
      for (const t of this.map.values()) {
        if (t.state !== 'running') continue;
        if (!this.interruptedAt) this.interruptedAt = performance.now();
        try {
          pt.interrupt(t.tid);
        } catch (e) {
          if (!isErr(e, 'ESRCH')) throw e; // exiting: the wait reports it
        }
      }
      for (const t of this.map.values()) {
        if (t.state !== 'running') continue;
        if (!this.awaitStop(t, deadline)) {
          if (this.isZombieLeader(t)) {
            t.state = 'gone';
            continue;
          }
          this.assertAlive();
          fail(
            'ETIMEDOUT',
            `thread ${t.label} of process ${this.pid} did not stop within ${timeoutMs} ms ` +
              `(scheduler state ${threadSchedState(this.pid, t.tid)}; 'D' means stuck in the kernel)`,
          );
        }
      }
      if (this.exited) fail('ESRCH', `process ${this.pid} exited`);
      // One thread held is the goal of stopOne (no rescan: the others are not held anyway).
      if (this.single && this.threads.length > 0) break;
      // Done when the kernel counts no thread that is not held: the held ones are stopped and
      // make no more, so a count that matches needs no second scan (one readdir less in the
      // pause). Held: the stopped ones, and a zombie leader (counted until the whole group
      // exits). More counted than held: threads made before their maker stopped, or missed by
      // the listing (a thread exiting while the kernel walks the list ends the walk early and
      // the threads after it are left out; seen: a thread the churning fixture had just made,
      // running untraced after a stop, 1 in 400 to 3000), so scan again.
      const counted = threadCount(this.pid);
      const held = this.stoppedCount() + (listed.includes(this.pid) && this.map.get(this.pid)?.state !== 'stopped' ? 1 : 0);
      if (counted === null ? fresh === 0 : counted <= held) break;
      if (fresh === 0) {
        // Nothing new listed, yet more counted: a thread that was exiting is counted until
        // reaped, which takes a moment: nap, then look again.
        if (performance.now() >= deadline) {
          fail('ETIMEDOUT', `process ${this.pid} counts ${counted} threads but only ${held} could be found and stopped within ${timeoutMs} ms; try again`);
        }
        if (++recounts > QUICK_RECOUNTS) pt.sleepMs(0.05);
      }
    }
    if (this.threads.length === 0) fail('ESRCH', `process ${this.pid} exited`);
  }

  /**
   * Deliver the signals owed to a stopped thread, faithfully (original
   * siginfo), then leave it running (`cont`) or detached (`detach`).
   * A restart command only injects a signal from a signal-delivery-stop,
   * so each owed signal is queued again with tgkill, the thread is let
   * into its delivery stop, and the original siginfo is put back there.
   */
  private redeliver(t: StoppedThread, mode: 'cont' | 'detach'): void {
    // Standard signals do not queue: one pending instance is all the kernel can hold.
    const owed = t.owed.splice(0).filter((o, i, all) => o.signal >= 32 || all.findIndex((x) => x.signal === o.signal) === i);
    for (const o of owed) pt.tgkill(this.pid, t.tid, o.signal);
    pt.cont(t.tid, 0);
    const deadline = performance.now() + REDELIVER_MS;
    let left = owed.length;
    while (left > 0) {
      const st = pt.waitFor(t.tid, Math.max(0, deadline - performance.now()));
      if (!st) break;
      if (st.kind === 'exited' || st.kind === 'killed') {
        this.noteExit(t.tid);
        return;
      }
      if (st.kind !== 'signal') {
        this.restart(t.tid, 0);
        continue;
      }
      const i = owed.findIndex((o) => o.signal === st.signal);
      if (i >= 0) {
        const o = owed.splice(i, 1)[0]!;
        if (o.siginfo) {
          try {
            pt.setSiginfo(t.tid, o.siginfo);
          } catch {
            /* deliver with the new siginfo */
          }
        }
        left--;
      }
      if (left === 0 && mode === 'detach') {
        pt.detach(t.tid, st.signal);
        t.state = 'detached';
        return;
      }
      this.restart(t.tid, st.signal); // ours, or an unrelated one: deliver either way
    }
    if (mode === 'detach') {
      // Still running (a signal is blocked right now, or it is already handled): stop it to detach.
      // Anything still queued stays queued in the kernel and is delivered later.
      this.bringToStop(t);
      if (t.state === 'stopped') {
        pt.detach(t.tid, 0);
        t.state = 'detached';
      }
    } else {
      t.state = 'running';
    }
  }

  /** Interrupt one running thread and wait for it (for detach). */
  private bringToStop(t: StoppedThread): void {
    if (this.isZombieLeader(t)) {
      t.state = 'gone';
      return;
    }
    t.state = 'running';
    try {
      pt.interrupt(t.tid);
    } catch (e) {
      if (!isErr(e, 'ESRCH')) throw e;
    }
    if (!this.awaitStop(t, performance.now() + DEFAULT_TIMEOUT_MS)) return;
    // Signals met on the way: queue them again, they are delivered after detach.
    for (const o of t.owed.splice(0)) {
      try {
        pt.tgkill(this.pid, t.tid, o.signal);
      } catch {
        /* gone */
      }
    }
  }

  /**
   * Resume a thread of a SIGSTOPped process without letting it run:
   * PTRACE_LISTEN. LISTEN only works from the group-stop's event stop; after
   * a remote operation the thread sits in a signal-delivery-stop (SIGTRAP)
   * instead, so it is first walked back into an event stop (interrupt, then
   * restart: the pending trap fires before any user code runs).
   */
  private keepGroupStopped(t: StoppedThread): void {
    try {
      pt.listen(t.tid);
      return;
    } catch (e) {
      if (isErr(e, 'ESRCH')) throw e;
    }
    pt.interrupt(t.tid);
    pt.cont(t.tid, 0);
    t.state = 'running';
    if (!this.awaitStop(t, performance.now() + DEFAULT_TIMEOUT_MS) || (t.state as ThreadState) !== 'stopped') return;
    if (t.groupStop) pt.listen(t.tid);
    else pt.cont(t.tid, 0); // the group-stop ended meanwhile (SIGCONT)
  }

  /**
   * Let every thread (but `except`, kept stopped for a remote call) run
   * again while staying attached (a retry loop waits and calls restop()). Owed signals are delivered now. A SIGSTOPped
   * process is left stopped (PTRACE_LISTEN).
   */
  resume(except?: number): void {
    if (this.done) fail('EINVAL', `process ${this.pid} is no longer attached`);
    for (const t of this.map.values()) {
      if (t.state !== 'stopped' || t.tid === except) continue;
      try {
        if (t.owed.length > 0) {
          this.redeliver(t, 'cont');
          continue;
        }
        if (t.groupStop) this.keepGroupStopped(t);
        else pt.cont(t.tid, 0);
        t.state = 'running';
      } catch (e) {
        if (!isErr(e, 'ESRCH')) throw e;
        t.state = 'running'; // killed while stopped: its exit report comes with the next wait
      }
    }
  }

  /**
   * While resumed, pass signals straight through to the threads for `ms`
   * (a traced thread that gets a signal stops until its tracer restarts it,
   * so a resumed process needs this to behave normally). Use instead of a
   * plain sleep between resume() and restop().
   */
  serviceSignals(ms: number): void {
    const deadline = performance.now() + ms;
    for (;;) {
      for (const t of this.map.values()) {
        if (t.state !== 'running') continue;
        let st: pt.WaitStatus | null;
        try {
          st = pt.pollWait(t.tid);
        } catch (e) {
          if (!isErr(e, 'ESRCH')) throw e;
          this.noteExit(t.tid);
          continue;
        }
        if (!st) continue;
        if (st.kind === 'exited' || st.kind === 'killed') this.noteExit(t.tid);
        else if (st.kind === 'signal') this.restart(t.tid, st.signal);
        else if (st.kind === 'event-stop' && st.groupStop) {
          try {
            pt.listen(t.tid);
          } catch {
            this.restart(t.tid, 0);
          }
        } else this.restart(t.tid, 0);
      }
      if (this.exited) {
        this.detach();
        fail('ESRCH', `process ${this.pid} exited`);
      }
      const left = deadline - performance.now();
      if (left <= 0) return;
      pt.sleepMs(Math.min(1, left));
    }
  }

  /**
   * Stop everything again after resume(), attaching threads created
   * meanwhile. On failure everything is detached and the error thrown.
   */
  restop(timeoutMs = DEFAULT_TIMEOUT_MS): void {
    if (this.done) fail('EINVAL', `process ${this.pid} is no longer attached`);
    try {
      this.stopAll(timeoutMs);
    } catch (e) {
      this.detach();
      throw e;
    }
  }

  /** resume(), let the process run normally for `ms`, then restop(): one step of a retry loop. */
  runFor(ms: number, timeoutMs = DEFAULT_TIMEOUT_MS): void {
    this.resume();
    this.serviceSignals(ms);
    this.restop(timeoutMs);
  }

  /**
   * Detach from every thread, delivering owed signals, leaving no stop
   * behind. Idempotent and safe after any error; never throws. Threads that
   * exited are reaped so no traced zombie remains.
   */
  detach(): void {
    if (this.done) return;
    this.done = true;
    for (const t of this.map.values()) this.detachThread(t);
    if (this.ownsMemory) this.memory.close();
  }

  /** Detach one thread (owed signals delivered), or reap it if it exited; never throws. */
  private detachThread(t: StoppedThread): void {
    try {
      if (t.state === 'running') this.bringToStop(t);
      if (t.state === 'stopped') {
        if (t.owed.length > 0) this.redeliver(t, 'detach');
        else {
          pt.detach(t.tid, 0);
          t.state = 'detached';
        }
      }
    } catch {
      // Most likely killed under us: reap below.
    }
    if (t.state !== 'detached' && t.state !== 'gone') {
      try {
        const st = pt.waitFor(t.tid, 50);
        if (st && (st.kind === 'exited' || st.kind === 'killed')) t.state = 'gone';
      } catch {
        t.state = 'gone'; // ECHILD: nothing left to reap
      }
    }
  }

  /**
   * From one held thread (stopOne) to every thread stopped, for an action
   * that follows an upload in the same stop; undone by releaseRest. On
   * failure everything is detached and the error thrown.
   */
  stopRest(timeoutMs = DEFAULT_TIMEOUT_MS): void {
    if (this.done) fail('EINVAL', `process ${this.pid} is no longer attached`);
    this.single = false;
    this.restop(timeoutMs);
  }

  /** Let every thread but the one remote operations use run on again (after stopRest). */
  releaseRest(): void {
    if (this.done) return;
    let keep: number | undefined;
    try {
      keep = this.mainThread.tid;
    } catch {
      /* none stopped: all go */
    }
    for (const t of [...this.map.values()]) {
      if (t.tid === keep) continue;
      this.detachThread(t);
      this.map.delete(t.tid);
    }
    this.single = true;
  }
}
