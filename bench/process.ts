/**
 * Benchmark: live processes.
 *
 * 1. Pause time: how long the target is stopped per apply and per revert
 *    (median, p99, max over many iterations), for a target with one
 *    (idle) thread, with 16 busy threads that never call the patched
 *    function, and with 16 threads that keep calling it (so the
 *    consistency check has to wait for a safe moment).  The figure is
 *    ProcessTarget.pauses: from the first thread stopped to the last one
 *    detached.  When the consistency check has to retry, the threads run
 *    between tries; only the final stop counts.
 * 2. Call cost: a tight loop of N calls of bench_fn() timed inside the
 *    target, unpatched and patched with an identical body (the patched
 *    call goes through the 5-byte jump), as a ratio.
 *
 * The target is test/fixtures/stress/stress.c and the payloads are built
 * with the toolchain helpers.  Sessions are in-process (openProcessEngine)
 * and synchronous from attach to detach.
 */
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type { Engine } from '../src/core/engine.js';
import { HotstackError } from '../src/errors.js';
import { openProcessEngine } from '../src/targets/process/session.js';
import type { ProcessTarget } from '../src/targets/process/target.js';
import {
  buildStress, machineNote, median, quantile, sleep, startStress, type StressProcess,
} from '../test/helpers/stress.js';

export interface Stats {
  n: number;
  medianMs: number;
  p99Ms: number;
  maxMs: number;
  meanMs: number;
}

export interface PauseRow {
  label: string;
  /** Threads in the target (main thread included). */
  threads: number;
  /** The function patched. */
  patched: string;
  /** Stopped time per action (sum of ProcessTarget.pauses during it). */
  apply: Stats;
  revert: Stats;
  /** Wall time of engine.action(). */
  applyWall: Stats;
  revertWall: Stats;
  /** Actions that gave up with EBUSY (retried). */
  ebusy: number;
}

export interface CallCost {
  /** Calls per sample (one `t N` of the stress base). */
  calls: number;
  samples: number;
  unpatchedNs: number;
  patchedNs: number;
  /** patched / unpatched, medians. */
  ratio: number;
  unpatchedSamples: number[];
  patchedSamples: number[];
}

export interface ProcessBenchResult {
  machine: string;
  iterations: number;
  pauses: PauseRow[];
  call: CallCost;
}

export interface ProcessBenchOptions {
  /** apply+revert iterations per row (default 200). */
  iterations?: number;
  /** Busy threads of the multi-threaded rows (default 16). */
  threads?: number;
  /** Calls per call-cost sample (default 20 million) and samples (default 7). */
  calls?: number;
  samples?: number;
}

function stats(xs: number[]): Stats {
  return {
    n: xs.length,
    medianMs: median(xs),
    p99Ms: quantile(xs, 0.99),
    maxMs: xs.length ? Math.max(...xs) : NaN,
    meanMs: xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : NaN,
  };
}

/** One action, its stopped time and wall time; EBUSY is retried and counted. */
function timedAction(e: Engine, name: string, cmd: 'APPLY' | 'REVERT', timeoutMs: number, onBusy: () => void): { pause: number; wall: number } {
  const target = e.target as ProcessTarget;
  for (let attempt = 0; ; attempt++) {
    const before = target.pauses.length;
    const t0 = performance.now();
    try {
      e.action(name, cmd, { timeoutMs });
    } catch (err) {
      if (!(err instanceof HotstackError && err.errno === 'EBUSY') || attempt >= 50) throw err;
      onBusy();
      continue;
    }
    const wall = performance.now() - t0;
    const pause = target.pauses.slice(before).reduce((a, b) => a + b, 0);
    return { pause, wall };
  }
}

interface RowSpec {
  label: string;
  /** Stress base commands that set the row up (e.g. `U16`). */
  setup: string[];
  threads: number;
  payload: string;
  name: string;
  patched: string;
  timeoutMs: number;
}

async function pauseRow(base: string, spec: RowSpec, iterations: number): Promise<PauseRow> {
  const p = await startStress(base);
  try {
    for (const c of spec.setup) await p.ask(c);
    await sleep(200); // let the threads get going
    const bytes = readFileSync(spec.payload);
    const a: number[] = [], r: number[] = [], aw: number[] = [], rw: number[] = [];
    let ebusy = 0;
    openProcessEngine(p.pid, (e) => {
      e.upload(spec.name, bytes);
      for (let i = 0; i < iterations; i++) {
        const x = timedAction(e, spec.name, 'APPLY', spec.timeoutMs, () => ebusy++);
        a.push(x.pause);
        aw.push(x.wall);
        const y = timedAction(e, spec.name, 'REVERT', spec.timeoutMs, () => ebusy++);
        r.push(y.pause);
        rw.push(y.wall);
      }
      e.action(spec.name, 'UNLOAD');
    });
    const status = await p.status();
    if (status.bad || status.crashes) throw new Error(`${spec.label}: workers saw ${status.bad} bad results and ${status.crashes} faults`);
    return {
      label: spec.label,
      threads: spec.threads,
      patched: spec.patched,
      apply: stats(a),
      revert: stats(r),
      applyWall: stats(aw),
      revertWall: stats(rw),
      ebusy,
    };
  } finally {
    p.child.kill('SIGKILL');
  }
}

async function callCost(base: string, payload: string, calls: number, samples: number): Promise<CallCost> {
  const p: StressProcess = await startStress(base);
  try {
    const time = async (): Promise<number> => {
      const line = await p.ask(`t ${calls}`, 120_000);
      const ns = Number(line);
      if (!Number.isFinite(ns)) throw new Error(`bench_fn timing: ${JSON.stringify(line)}`);
      return ns;
    };
    openProcessEngine(p.pid, (e) => e.upload('stress_bench', readFileSync(payload)));
    await time(); // warm up
    const un: number[] = [], pa: number[] = [];
    // Alternate, so drift (frequency, noise) hits both sides alike.
    for (let i = 0; i < samples; i++) {
      un.push(await time());
      openProcessEngine(p.pid, (e) => e.action('stress_bench', 'APPLY'));
      pa.push(await time());
      openProcessEngine(p.pid, (e) => e.action('stress_bench', 'REVERT'));
    }
    const u = median(un), q = median(pa);
    return { calls, samples, unpatchedNs: u, patchedNs: q, ratio: q / u, unpatchedSamples: un, patchedSamples: pa };
  } finally {
    p.child.kill('SIGKILL');
  }
}

/**
 * Runs the process benchmark in `workDir` (its `fixtures/` and `state/`
 * subdirectories, removed afterwards) and returns the figures as plain data.
 * Takes about a minute (200 iterations) on a small machine.
 */
export async function benchProcess(workDir: string, opts: ProcessBenchOptions = {}): Promise<ProcessBenchResult> {
  const iterations = opts.iterations ?? 200;
  const threads = opts.threads ?? 16;
  const savedStateDir = process.env.HOTSTACK_STATE_DIR;
  process.env.HOTSTACK_STATE_DIR = join(workDir, 'state');
  try {
    const fx = buildStress(join(workDir, 'fixtures'));
    const rows: RowSpec[] = [
      { label: '1 thread (idle)', setup: [], threads: 1, payload: fx.bench, name: 'stress_bench', patched: 'bench_fn', timeoutMs: 1000 },
      { label: `${threads} busy threads`, setup: [`U${threads}`], threads: threads + 1, payload: fx.bench, name: 'stress_bench', patched: 'bench_fn', timeoutMs: 1000 },
      // The threads call the patched function: the check waits for a safe
      // moment.  A short loop in compute() (K4) keeps that feasible.
      { label: `${threads} threads calling it`, setup: ['K4', `W${threads}`], threads: threads + 1, payload: fx.v1, name: 'stress_v1', patched: 'compute', timeoutMs: 5000 },
    ];
    const pauses: PauseRow[] = [];
    for (const r of rows) pauses.push(await pauseRow(fx.base, r, iterations));
    const call = await callCost(fx.base, fx.bench, opts.calls ?? 20_000_000, opts.samples ?? 7);
    return { machine: machineNote(), iterations, pauses, call };
  } finally {
    if (savedStateDir === undefined) delete process.env.HOTSTACK_STATE_DIR;
    else process.env.HOTSTACK_STATE_DIR = savedStateDir;
    // Only what we made: workDir may be shared with other benchmarks.
    rmSync(join(workDir, 'fixtures'), { recursive: true, force: true });
    rmSync(join(workDir, 'state'), { recursive: true, force: true });
  }
}

/** Prints the figures as tables (one line per call of `out`). */
export function printProcessBench(r: ProcessBenchResult, out: (line: string) => void = console.log): void {
  const f = (x: number) => x.toFixed(2).padStart(8);
  out(`live process: time the target is stopped per action (ms, ${r.iterations} applies and ${r.iterations} reverts per row; ${r.machine})`);
  out('  target                         patched    action   median      p99      max   wall med  EBUSY');
  for (const row of r.pauses) {
    for (const [what, s, w] of [['apply', row.apply, row.applyWall], ['revert', row.revert, row.revertWall]] as const) {
      out(`  ${row.label.padEnd(30)} ${row.patched.padEnd(10)} ${what.padEnd(6)} ${f(s.medianMs)} ${f(s.p99Ms)} ${f(s.maxMs)}   ${f(w.medianMs)} ${String(what === 'apply' ? row.ebusy : '').padStart(6)}`);
    }
  }
  out('  (pause: first thread stopped to last detached; a consistency check that retries counts only its last stop;');
  out('   wall: the whole engine action; EBUSY: actions that gave up and were retried)');
  const c = r.call;
  out(`live process: cost of a call, patched (through the jump) vs unpatched (${c.samples} samples of ${c.calls} calls, medians)`);
  out(`  unpatched ${c.unpatchedNs.toFixed(3)} ns/call, patched ${c.patchedNs.toFixed(3)} ns/call, ratio ${c.ratio.toFixed(3)}`);
}
