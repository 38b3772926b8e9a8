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
 * Default --jobs: twice the CPUs, at most 16. Much of a process's time is
 * spent waiting for its threads to reach a ptrace stop or for the kernel's
 * syscall round trips, which another worker can fill; beyond that, more
 * threads only compete for the same CPUs (see the fleet bench).
 */
export function defaultJobs(): number {
  return Math.max(1, Math.min(16, availableParallelism() * 2));
}

/**
 * Run `action` on every process of `procs` with at most `jobs` at a time.
 * `onOutcome` is called as each finishes (in completion order); resolves
 * with every outcome in `procs` order. Never rejects for a process's sake.
 */
export function runPool(procs: FleetProcess[], action: FleetAction, jobs: number, onOutcome: (o: ProcessOutcome) => void): Promise<ProcessOutcome[]> {
  const outcomes = new Map<number, ProcessOutcome>();
  const n = Math.max(1, Math.min(jobs, procs.length));
  if (!procs.length) return Promise.resolve([]);
  return new Promise((resolve) => {
    let next = 0;
    let live = n;
    const record = (o: ProcessOutcome): void => {
      outcomes.set(o.pid, o);
      onOutcome(o);
    };
    const finish = (): void => {
      if (--live > 0) return;
      // A process no worker got to (every worker died): failed, not forgotten.
      for (const p of procs) {
        if (!outcomes.has(p.pid)) {
          const message = 'not acted on: the fleet workers stopped';
          record({ pid: p.pid, comm: p.comm, result: 'failed', detail: `EIO: ${message}`, errno: 'EIO', code: -5, message, steps: [], notices: [], ms: 0 });
        }
      }
      resolve(procs.map((p) => outcomes.get(p.pid)!));
    };
    for (let i = 0; i < n; i++) {
      const w = new Worker(new URL('./worker.js', import.meta.url), { workerData: { action } });
      let current: WorkerTask | undefined;
      let ended = false;
      const feed = (): void => {
        const p = procs[next++];
        if (!p) {
          current = undefined;
          void w.terminate();
          return;
        }
        current = { pid: p.pid, comm: p.comm };
        w.postMessage(current);
      };
      w.on('message', (r: WorkerReply) => {
        if (r.outcome) record(r.outcome);
        feed();
      });
      const end = (why?: string): void => {
        if (ended) return;
        ended = true;
        if (current && why) {
          const message = `internal error in a fleet worker: ${why}`;
          record({ pid: current.pid, comm: current.comm, result: 'failed', detail: `EIO: ${message}`, errno: 'EIO', code: -5, message, steps: [], notices: [], ms: 0 });
        }
        finish();
      };
      w.on('error', (e) => end(e.message));
      w.on('exit', (code) => end(code !== 0 && current ? `exit status ${code}` : undefined));
    }
  });
}
