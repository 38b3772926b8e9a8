/**
 * Bounded parallelism for a fleet command: `jobs` worker threads, each
 * given the next process as soon as it is done with one, so a slow process
 * (one retrying for a safe moment) holds up one worker, not the run.
 */
import { availableParallelism } from 'node:os';
import { setFlagsFromString } from 'node:v8';
import { Worker } from 'node:worker_threads';
import type { FleetProcess } from '../targets/process/discover.js';
import type { FleetAction, ProcessOutcome } from './task.js';

/**
 * Main thread to worker, once: the processes to act on, and the shared
 * claim board. `board[0]` is the index of the next process to claim (each
 * worker takes the next one itself, with an atomic add, the moment it is
 * done with one: a worker never idles waiting for the main thread, which
 * may be busy printing or descheduled); `board[1 + w]` is the index worker
 * `w` is acting on (-1 between processes), so a worker that dies leaves
 * the process it had named.
 */
export interface WorkerTasks {
  procs: { pid: number; comm: string }[];
  board: SharedArrayBuffer;
  worker: number;
}

/** Worker to main thread: its modules are loaded, one process done, or no process left. */
export type WorkerReply = { ready: true } | { outcome: ProcessOutcome } | { done: true };

/** Claim the next process of a WorkerTasks board: its index, or undefined when none is left. */
export function claim(board: Int32Array, worker: number, total: number): number | undefined {
  const i = Atomics.add(board, 0, 1);
  Atomics.store(board, 1 + worker, i < total ? i : -1);
  return i < total ? i : undefined;
}

/**
 * Default --jobs: one worker per CPU, at most 16. The per-process work is
 * mostly CPU (parsing /proc, remote system calls, state saves) with short
 * waits for the target to reach a ptrace stop; measured on 2 CPUs (the
 * fleet bench's sweep), 2 workers beat 1 by about 1.4x while 4 gained
 * less and 8 was slower than 1: more threads than CPUs only compete.
 */
export function defaultJobs(): number {
  return Math.max(1, Math.min(16, availableParallelism()));
}

/** A worker thread and what became of it before anyone listened (an early worker may fail while the CLI loads). */
interface Slot {
  worker: Worker;
  /** Its modules are loaded (it said so). */
  ready?: boolean;
  /** To be stopped as soon as it is ready (see stopSlot). */
  stopping?: boolean;
  /** Set once it has exited: why (undefined for a clean exit). */
  ended?: { why?: string };
  onMessage?: (r: WorkerReply) => void;
  onEnd?: (why?: string) => void;
}

function startSlot(): Slot {
  const slot: Slot = { worker: new Worker(new URL('./worker.js', import.meta.url)) };
  const end = (why?: string): void => {
    if (slot.ended) return;
    slot.ended = { why };
    slot.onEnd?.(why);
  };
  slot.worker.on('message', (r: WorkerReply) => {
    if (!('ready' in r)) return slot.onMessage?.(r);
    slot.ready = true;
    if (slot.stopping) void slot.worker.terminate();
  });
  slot.worker.on('error', (e) => end(e.message));
  slot.worker.on('exit', (code) => end(code !== 0 ? `exit status ${code}` : undefined));
  return slot;
}

/**
 * Stop a worker, but never while it loads its modules: a worker stopped
 * (or left running at exit) while koffi loads its native part aborts the
 * whole process (a fatal N-API error in koffi's init, seen as SIGABRT of
 * a command that had nothing to do). It is stopped once it says it is
 * ready; until then it keeps the process alive.
 */
function stopSlot(s: Slot): void {
  if (s.ended) return;
  if (s.ready) void s.worker.terminate();
  else s.stopping = true;
}

const early: Slot[] = [];

/**
 * Start the workers of a fleet command before the CLI loads its own
 * modules (bin/hotstack calls this first): a worker loading the engine and
 * the main thread loading the CLI then overlap, on a machine with CPUs to
 * spare, instead of one after the other (each takes 70-80 ms). Only when
 * `argv` asks for a fleet (`--all`, several `--pid`); `--jobs` is read
 * roughly here (the CLI checks both), and FleetPool starts or stops
 * workers to match. A command that ends without a pool stops them with
 * releaseEarlyWorkers.
 */
export function prestartFleet(argv: readonly string[]): void {
  const pids = argv.filter((a, i) => a.startsWith('--pid=') || argv[i - 1] === '--pid').join(',');
  if (!(argv.includes('--all') || pids.includes(',')) || early.length) return;
  noOptimizingCompiler();
  const i = argv.findIndex((a) => a === '--jobs' || a.startsWith('--jobs='));
  const v = i < 0 ? undefined : argv[i]!.startsWith('--jobs=') ? argv[i]!.slice(7) : argv[i + 1];
  const jobs = v !== undefined && /^\d+$/.test(v) && Number(v) >= 1 && Number(v) <= 256 ? Number(v) : defaultJobs();
  for (let k = 0; k < jobs; k++) early.push(startSlot());
}

/** Stop the workers prestartFleet started that no pool took (bin/hotstack, once the command is done). */
export function releaseEarlyWorkers(): void {
  for (const s of early.splice(0)) stopSlot(s);
}

/** Main thread to worker, first: the action (an upload preloads what it needs meanwhile). */
export interface WorkerAction {
  action: FleetAction;
}

/**
 * The workers of one fleet command. Started as soon as the action is
 * known, before the processes are picked (loading the engine in each
 * thread takes longer than a scan of /proc, and the two then overlap), or
 * earlier still by prestartFleet.
 */
export class FleetPool {
  private readonly slots: Slot[];

  constructor(action: FleetAction, jobs: number) {
    noOptimizingCompiler();
    const want = Math.max(1, jobs);
    this.slots = early.splice(0, want);
    releaseEarlyWorkers();
    while (this.slots.length < want) this.slots.push(startSlot());
    for (const s of this.slots) if (!s.ended) s.worker.postMessage({ action } satisfies WorkerAction);
  }

  /** Stop every worker (a run that found nothing to do, or a user error after the start). */
  close(): void {
    for (const s of this.slots) stopSlot(s);
  }

  /**
   * Act on every process of `procs`, each worker taking the next one as
   * soon as it is done with one (see WorkerTasks). `onOutcome` is called as
   * each finishes (in completion order); resolves with every outcome in
   * `procs` order, then the workers are gone. Never rejects for a
   * process's sake.
   */
  run(procs: FleetProcess[], onOutcome: (o: ProcessOutcome) => void): Promise<ProcessOutcome[]> {
    const outcomes = new Map<number, ProcessOutcome>();
    // Workers beyond the number of processes have nothing to do.
    const used = this.slots.slice(0, Math.max(1, Math.min(this.slots.length, procs.length)));
    for (const s of this.slots.slice(used.length)) stopSlot(s);
    if (!procs.length) {
      this.close();
      return Promise.resolve([]);
    }
    const board = new SharedArrayBuffer(4 * (1 + used.length));
    const claims = new Int32Array(board);
    claims.fill(-1, 1);
    const list = procs.map((p) => ({ pid: p.pid, comm: p.comm }));
    return new Promise((resolve) => {
      let live = used.length;
      const record = (o: ProcessOutcome): void => {
        if (outcomes.has(o.pid)) return;
        outcomes.set(o.pid, o);
        onOutcome(o);
      };
      const finish = (): void => {
        if (--live > 0) return;
        // A process no worker got to (every worker died): failed, not forgotten.
        for (const p of procs) {
          if (!outcomes.has(p.pid)) record(workerFailure(p, 'not acted on: the fleet workers stopped'));
        }
        resolve(procs.map((p) => outcomes.get(p.pid)!));
      };
      used.forEach((s, k) => {
        s.onMessage = (r) => {
          if ('outcome' in r) record(r.outcome);
          else if ('done' in r) stopSlot(s);
        };
        // The process it had claimed, if any, is failed with the reason; the others take the rest.
        s.onEnd = (why) => {
          const i = Atomics.load(claims, 1 + k);
          const current = i >= 0 ? procs[i] : undefined;
          if (current && why && !outcomes.has(current.pid)) record(workerFailure(current, `internal error in a fleet worker: ${why}`));
          finish();
        };
        // One that died before the run (while loading) claimed nothing: it only ends.
        if (s.ended) {
          s.onEnd = undefined;
          finish();
          return;
        }
        // Posted at once: a worker still loading finds its tasks queued.
        s.worker.postMessage({ procs: list, board, worker: k } satisfies WorkerTasks);
      });
    });
  }
}

/**
 * Turn V8's optimizing compiler (TurboFan) off for the run, before the
 * workers start (the flag is per process). A fleet runs the same short
 * paths once per process, and the optimized code never paid for its
 * compilation: measured on 2 CPUs with 1000 processes, TurboFan's
 * background threads took about 0.9 s of CPU (a quarter of the run's)
 * while the workers' own CPU stayed the same without it (1.29 s and 1.26 s
 * against 1.37 s and 1.30 s), so with the CPUs all busy the run took
 * 1.7 s instead of 2.2 s. Sparkplug (the baseline compiler) still runs.
 * Only fleet commands do this: analysis and builds are long enough to
 * gain from TurboFan.
 */
let noOpt = false;

function noOptimizingCompiler(): void {
  if (noOpt) return;
  noOpt = true;
  setFlagsFromString('--no-opt');
}

function workerFailure(p: FleetProcess, message: string): ProcessOutcome {
  return { pid: p.pid, comm: p.comm, result: 'failed', detail: `EIO: ${message}`, errno: 'EIO', code: -5, message, steps: [], notices: [], ms: 0 };
}
