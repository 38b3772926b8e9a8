/**
 * Bounded parallelism for a fleet command: `jobs` worker threads, each
 * given the next process as soon as it is done with one, so a slow process
 * (one retrying for a safe moment) holds up one worker, not the run.
 */
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import type { FleetProcess } from '../targets/process/discover.js';
import type { FleetAction, ProcessOutcome } from './task.js';

/** Main thread to worker: act on this process. */
export interface WorkerTask {
  pid: number;
  comm: string;
}

/** Worker to main thread: started, or one process done. */
export type WorkerReply = { ready: true; outcome?: undefined } | { ready?: undefined; outcome: ProcessOutcome };

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
   * Act on every process of `procs`, at most one per worker at a time.
   * `onOutcome` is called as each finishes (in completion order); resolves
   * with every outcome in `procs` order, then the workers are gone. Never
   * rejects for a process's sake.
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
    return new Promise((resolve) => {
      let next = 0;
      let live = used.length;
      const record = (o: ProcessOutcome): void => {
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
      for (const w of used) {
        let current: FleetProcess | undefined;
        let ended = false;
        // Posted at once: a worker still loading finds its first task queued.
        const feed = (): void => {
          current = procs[next++];
          if (!current) {
            void w.terminate();
            return;
          }
          w.postMessage({ pid: current.pid, comm: current.comm } satisfies WorkerTask);
        };
        w.on('message', (r: WorkerReply) => {
          if (!r.outcome) return; // started
          record(r.outcome);
          feed();
        });
        const end = (why?: string): void => {
          if (ended) return;
          ended = true;
          if (current && why) record(workerFailure(current, `internal error in a fleet worker: ${why}`));
          finish();
        };
        w.on('error', (e) => end(e.message));
        w.on('exit', (code) => end(code !== 0 && current ? `exit status ${code}` : undefined));
        feed();
      }
    });
  }
}

function workerFailure(p: FleetProcess, message: string): ProcessOutcome {
  return { pid: p.pid, comm: p.comm, result: 'failed', detail: `EIO: ${message}`, errno: 'EIO', code: -5, message, steps: [], notices: [], ms: 0 };
}
