/**
 * Bounded parallelism for a fleet command: `jobs` worker threads, each
 * given the next process as soon as it is done with one, so a slow process
 * (one retrying for a safe moment) holds up one worker, not the run.
 */
import { availableParallelism } from 'node:os';
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

/** Worker to main thread: one process done, or no process left. */
export type WorkerReply = { outcome: ProcessOutcome } | { done: true };

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

/**
 * The workers of one fleet command. Started as soon as the action is
 * known, before the processes are picked: loading the engine in each
 * thread takes longer than a scan of /proc, and the two then overlap.
 */
export class FleetPool {
  private readonly workers: Worker[] = [];

  constructor(action: FleetAction, jobs: number) {
    for (let i = 0; i < Math.max(1, jobs); i++) this.workers.push(new Worker(new URL('./worker.js', import.meta.url), { workerData: { action } }));
  }

  /** Stop every worker (a run that found nothing to do, or a user error after the start). */
  close(): void {
    for (const w of this.workers) void w.terminate();
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
    const used = this.workers.slice(0, Math.max(1, Math.min(this.workers.length, procs.length)));
    for (const w of this.workers.slice(used.length)) void w.terminate();
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
      used.forEach((w, k) => {
        let ended = false;
        w.on('message', (r: WorkerReply) => {
          if ('outcome' in r) record(r.outcome);
          else if ('done' in r) void w.terminate();
        });
        const end = (why?: string): void => {
          if (ended) return;
          ended = true;
          // The process it had claimed, if any, is failed with the reason; the others take the rest.
          const i = Atomics.load(claims, 1 + k);
          const current = i >= 0 ? procs[i] : undefined;
          if (current && why && !outcomes.has(current.pid)) record(workerFailure(current, `internal error in a fleet worker: ${why}`));
          finish();
        };
        w.on('error', (e) => end(e.message));
        w.on('exit', (code) => end(code !== 0 ? `exit status ${code}` : undefined));
        // Posted at once: a worker still loading finds its tasks queued.
        w.postMessage({ procs: list, board, worker: k } satisfies WorkerTasks);
      });
    });
  }
}

function workerFailure(p: FleetProcess, message: string): ProcessOutcome {
  return { pid: p.pid, comm: p.comm, result: 'failed', detail: `EIO: ${message}`, errno: 'EIO', code: -5, message, steps: [], notices: [], ms: 0 };
}
