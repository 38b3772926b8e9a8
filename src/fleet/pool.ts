/**
 * Bounded parallelism for a fleet command: `jobs` threads, the main thread
 * (once its scan of /proc is done) and `jobs - 1` workers, each taking the
 * next process as soon as it is done with one, so a slow process (one
 * retrying for a safe moment) holds up one thread, not the run.
 */
import { availableParallelism } from 'node:os';
import { setFlagsFromString } from 'node:v8';
import { Worker } from 'node:worker_threads';
import type { FleetProcess } from '../targets/process/discover.js';
import type { FleetAction, ProcessOutcome } from './task.js';

/**
 * Main thread to worker: the shared claim board (once), then the processes
 * as the main thread finds them (`more`, in the same order to every
 * worker), then how many there are in all (`total`, once the scan is
 * done). `board[0]` is the index of the next process to claim (each worker
 * takes the next one itself, with an atomic compare-and-swap, the moment
 * it is done with one and holds it: a worker never idles waiting for the
 * main thread, which may be busy scanning or printing); `board[1 + w]` is
 * the index worker `w` is acting on (-1 between processes), so a worker
 * that dies leaves the process it had named.
 */
export type WorkerTasks = { board: SharedArrayBuffer; worker: number } | { more: { pid: number; comm: string }[] } | { total: number };

/** Worker to main thread: its modules are loaded, one process done, or no process left. */
export type WorkerReply = { ready: true } | { outcome: ProcessOutcome } | { done: true };

/**
 * Claim the next process of a board among the `known` a worker holds: its
 * index, or undefined when the next is not known to it yet (or there is
 * none). Never claims past `known`, so no index is held waiting.
 */
export function claim(board: Int32Array, worker: number, known: number): number | undefined {
  for (;;) {
    const i = Atomics.load(board, 0);
    if (i >= known) {
      Atomics.store(board, 1 + worker, -1);
      return undefined;
    }
    if (Atomics.compareExchange(board, 0, i, i + 1) !== i) continue;
    Atomics.store(board, 1 + worker, i);
    return i;
  }
}

/**
 * Default --jobs: one thread per CPU (the main thread counts), at most 16.
 * The per-process work is mostly CPU (parsing /proc, remote system calls,
 * state saves) with short waits for the target to reach a ptrace stop;
 * measured on 2 CPUs (the fleet bench's sweep), 2 beat 1 while 4 and 8
 * were slower than 1: more threads than CPUs only compete.
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
  /** It has exited (onEnd says why to whoever listens by then). */
  ended?: boolean;
  onMessage?: (r: WorkerReply) => void;
  onEnd?: (why?: string) => void;
}

function startSlot(): Slot {
  const slot: Slot = { worker: new Worker(new URL('./worker.js', import.meta.url)) };
  const end = (why?: string): void => {
    if (slot.ended) return;
    slot.ended = true;
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

/**
 * The workers prestartFleet started, until a pool takes them. Kept with
 * the process, not this module: bin/hotstack calls prestartFleet from a
 * small bundle of this module, and the CLI's bundle holds a copy of its
 * own (see package.json's bundle script).
 */
const early: Slot[] = ((globalThis as Record<symbol, unknown>)[Symbol.for('hotstack.fleet.early')] ??= []) as Slot[];

/**
 * Start the workers of a fleet command before the CLI loads its own
 * modules (bin/hotstack calls this first): a worker loading the engine and
 * the main thread loading the CLI then overlap, on a machine with CPUs to
 * spare, instead of one after the other (each takes 70-80 ms). Only when
 * `argv` asks for a fleet (`--all`, several `--pid`), one fewer than
 * `--jobs` (the main thread is one); `--jobs` is read roughly here (the
 * CLI checks both), and FleetPool starts or stops workers to match. A
 * command that ends without a pool stops them with releaseEarlyWorkers.
 * True when `argv` asks for a fleet (V8's optimizing compiler is then off:
 * bin/hotstack loads the CLI's code cache made for that).
 */
export function prestartFleet(argv: readonly string[]): boolean {
  const pids = argv.filter((a, i) => a.startsWith('--pid=') || argv[i - 1] === '--pid').join(',');
  if (!(argv.includes('--all') || pids.includes(','))) return false;
  if (early.length) return true;
  noOptimizingCompiler();
  const i = argv.findIndex((a) => a === '--jobs' || a.startsWith('--jobs='));
  const v = i < 0 ? undefined : argv[i]!.startsWith('--jobs=') ? argv[i]!.slice(7) : argv[i + 1];
  const jobs = v !== undefined && /^\d+$/.test(v) && Number(v) >= 1 && Number(v) <= 256 ? Number(v) : defaultJobs();
  // The main thread is one of the jobs (see FleetRun): one worker fewer.
  for (let k = 1; k < jobs; k++) early.push(startSlot());
  return true;
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

  /**
   * `local`: how the main thread acts on a process itself (runOnProcess:
   * passed in, so that this module stays small for bin/hotstack). With it
   * the main thread is one of the `jobs`, taking processes once the scan
   * is done, and one worker fewer is started (each costs its start-up:
   * Node's environment, the engine, the decoder); without it (a test
   * switch) every job is a worker.
   */
  constructor(private readonly action: FleetAction, jobs: number, private readonly local?: LocalRunner) {
    noOptimizingCompiler();
    const want = Math.max(local ? 0 : 1, jobs - (local ? 1 : 0));
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
   * Start acting: processes are then given with FleetRun.add as they are
   * found, and FleetRun.end says there are no more. `onOutcome` is called
   * as each finishes (in completion order).
   */
  start(onOutcome: (o: ProcessOutcome) => void): FleetRun {
    return new FleetRun(this.slots, onOutcome, this.local ? { run: this.local, action: this.action } : undefined);
  }
}

/** The main thread's way of acting on one process (runOnProcess). */
export type LocalRunner = (pid: number, comm: string, action: FleetAction) => ProcessOutcome;

/** How long the main thread acts on processes before it lets the workers' outcomes and the progress through. */
const LOCAL_SLICE_MS = 20;

/** One fleet command's processes handed to the workers as they are found (FleetPool.start). */
export class FleetRun {
  private readonly procs: FleetProcess[] = [];
  private readonly outcomes = new Map<number, ProcessOutcome>();
  private readonly claims: Int32Array;
  private live: number;
  private ended = false;
  private resolve: ((o: ProcessOutcome[]) => void) | null = null;

  /** The main thread is done acting (or does not act). */
  private localDone: boolean;

  constructor(
    private readonly slots: Slot[],
    private readonly onOutcome: (o: ProcessOutcome) => void,
    private readonly local?: { run: LocalRunner; action: FleetAction },
  ) {
    this.localDone = !local;
    // One place per worker, and the main thread's after them.
    const board = new SharedArrayBuffer(4 * (2 + slots.length));
    this.claims = new Int32Array(board);
    this.claims.fill(-1, 1);
    this.live = slots.length;
    slots.forEach((s, k) => {
      s.onMessage = (r) => {
        if ('outcome' in r) this.record(r.outcome);
        else if ('done' in r) stopSlot(s);
      };
      // The process it had claimed, if any, is failed with the reason; the others take the rest.
      s.onEnd = (why) => {
        const i = Atomics.load(this.claims, 1 + k);
        const current = i >= 0 ? this.procs[i] : undefined;
        if (current && why && !this.outcomes.has(current.pid)) this.record(workerFailure(current, `internal error in a fleet worker: ${why}`));
        this.workerGone();
      };
      // One that died before the run (while loading) claimed nothing: it only ends.
      if (s.ended) {
        s.onEnd = undefined;
        this.live--;
        return;
      }
      // Posted at once: a worker still loading finds its tasks queued.
      s.worker.postMessage({ board, worker: k } satisfies WorkerTasks);
    });
  }

  /** More processes to act on (each pid once). */
  add(procs: FleetProcess[]): void {
    if (!procs.length) return;
    this.procs.push(...procs);
    const more = procs.map((p) => ({ pid: p.pid, comm: p.comm }));
    for (const s of this.slots) if (!s.ended) s.worker.postMessage({ more } satisfies WorkerTasks);
  }

  /**
   * No more processes: the main thread takes its share now (see
   * actLocally); resolves with every outcome in the order they were added,
   * once it is done and the workers are gone. Never rejects for a
   * process's sake.
   */
  end(): Promise<ProcessOutcome[]> {
    this.ended = true;
    const total = this.procs.length;
    for (const s of this.slots) if (!s.ended) s.worker.postMessage({ total } satisfies WorkerTasks);
    return new Promise((resolve) => {
      this.resolve = resolve;
      if (this.local) void this.actLocally();
      else if (this.live <= 0) this.finish();
    });
  }

  /**
   * The main thread's share, once the scan is done: claims like a worker,
   * acts synchronously (as a single-process command does), and every
   * LOCAL_SLICE_MS goes back to the event loop for the workers' outcomes.
   * Between two processes it holds no tracee, so nothing can report to it.
   */
  private async actLocally(): Promise<void> {
    const { run, action } = this.local!;
    const me = this.slots.length;
    let slice = performance.now();
    for (let i = claim(this.claims, me, this.procs.length); i !== undefined; i = claim(this.claims, me, this.procs.length)) {
      const p = this.procs[i]!;
      let o: ProcessOutcome;
      try {
        o = run(p.pid, p.comm, action);
      } catch (e) {
        // runOnProcess reports every HotstackError itself: this is a bug, kept to this one process.
        o = workerFailure(p, `internal error: ${e instanceof Error ? e.message : String(e)}`);
      }
      this.record(o);
      if (performance.now() - slice >= LOCAL_SLICE_MS) {
        await new Promise((r) => setImmediate(r));
        slice = performance.now();
      }
    }
    this.localDone = true;
    if (this.live <= 0) this.finish();
  }

  private record(o: ProcessOutcome): void {
    if (this.outcomes.has(o.pid)) return;
    this.outcomes.set(o.pid, o);
    this.onOutcome(o);
  }

  private workerGone(): void {
    if (--this.live <= 0 && this.ended && this.localDone) this.finish();
  }

  private finish(): void {
    // A process no worker got to (every worker died): failed, not forgotten.
    for (const p of this.procs) {
      if (!this.outcomes.has(p.pid)) this.record(workerFailure(p, 'not acted on: the fleet workers stopped'));
    }
    this.resolve?.(this.procs.map((p) => this.outcomes.get(p.pid)!));
    this.resolve = null;
  }
}

let noOpt = false;

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
function noOptimizingCompiler(): void {
  if (noOpt) return;
  noOpt = true;
  setFlagsFromString('--no-opt');
}

/** A process failed by the fleet machinery itself (not by acting on it): a worker's bug or death. */
export function workerFailure(p: { pid: number; comm: string }, message: string): ProcessOutcome {
  return { pid: p.pid, comm: p.comm, result: 'failed', detail: `EIO: ${message}`, errno: 'EIO', code: -5, message, steps: [], notices: [], ms: 0 };
}
