/**
 * A fleet worker thread: acts on one process at a time, claiming the next
 * from the pool's shared board as soon as it is done. ptrace binds a tracee to the thread that attached it, so each
 * process is handled from start to end by one worker; the engine and the
 * ptrace layer are synchronous, so threads are how processes overlap.
 */
import { parentPort } from 'node:worker_threads';
import { runOnProcess, type FleetAction } from './task.js';
import { claim, workerFailure, type WorkerAction, type WorkerReply, type WorkerTasks } from './pool.js';
import { loadIced } from '../analysis/iced.js';
import { testMode } from '../core/fault.js';

// Test switch: this worker dies as it starts, before the pool has posted anything (how the pool copes).
if (testMode() && process.env.HOTSTACK_TEST_WORKER_EXIT === 'start') process.exit(3);
// Loaded: from now on the pool may stop this thread (see stopSlot in pool.ts).
parentPort!.postMessage({ ready: true } satisfies WorkerReply);

/** Posted first by the pool (a worker may start before the CLI knows the action: see prestartFleet). */
let action: FleetAction | undefined;

/** What the pool has posted: the board, the processes found so far, and (once the scan is done) how many in all. */
let board: Int32Array | undefined;
let worker = 0;
const procs: { pid: number; comm: string }[] = [];
let total: number | undefined;
let finished = false;

parentPort!.on('message', (m: WorkerAction | WorkerTasks) => {
  if ('action' in m) {
    action = m.action;
    // An upload analyses its base: load the decoder (about 25 ms) while the main thread still
    // picks the processes, not during the first one. A failure is reported by that process.
    if (action.action === 'load' || action.action === 'upload') {
      try {
        loadIced();
      } catch {
        /* said again, with its errno, where the analysis needs it */
      }
    }
    return;
  }
  if ('board' in m) {
    board = new Int32Array(m.board);
    worker = m.worker;
  } else if ('more' in m) procs.push(...m.more);
  else total = m.total;
  work();
});

/** Act on every process it can claim; back to the event loop when it must wait for more. */
function work(): void {
  if (!board || finished) return;
  for (let i = claim(board, worker, procs.length); i !== undefined; i = claim(board, worker, procs.length)) {
    const { pid, comm } = procs[i]!;
    // Test switch: this worker dies as it takes that process (how the pool copes).
    if (testMode() && process.env.HOTSTACK_TEST_WORKER_EXIT === String(pid)) process.exit(3);
    let reply: WorkerReply;
    try {
      reply = { outcome: runOnProcess(pid, comm, action!) };
    } catch (e) {
      // runOnProcess reports every HotstackError itself: this is a bug, kept to this one process.
      reply = { outcome: workerFailure({ pid, comm }, `internal error: ${e instanceof Error ? e.message : String(e)}`) };
    }
    parentPort!.postMessage(reply);
  }
  // Every process claimed (by this worker or another) and none will come: done.
  if (total !== undefined && Atomics.load(board, 0) >= total) {
    finished = true;
    parentPort!.postMessage({ done: true } satisfies WorkerReply);
  }
}
