/**
 * The stall a live patch causes, measured from inside the target
 * (bench/fixtures/stall.c: a thread that reads the clock in a loop and
 * keeps its largest gap), next to the ptrace floor (bench/fixtures/floor.c:
 * seize and interrupt every thread, write 5 bytes through /proc/PID/mem,
 * detach) and to the gap seen while nothing happens (noise). The payload
 * patches two functions; apply and revert run through the engine in this
 * process (what `hotstack apply` does after its start-up, its code warm).
 * Phases inside the stop come from ProcessTarget.phases. Then the same
 * through the real CLI, a fresh hotstack per action (see StallCliRow).
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { buildPayload } from '../src/builder/build.js';
import { openProcessEngine } from '../src/targets/process/session.js';
import type { ProcessTarget } from '../src/targets/process/target.js';
import { machineNote, median, quantile, sleep, startStress, type StressProcess } from '../test/helpers/stress.js';
import { run } from '../test/helpers/toolchain.js';
import { HOTSTACK_BIN, runtimeAddress } from '../test/helpers/live.js';

export interface StallRow {
  label: string;
  threads: number;
  /** Medians and p90 of the largest gap per operation, microseconds. */
  noise: { medianUs: number; p90Us: number };
  floor: { medianUs: number; p90Us: number };
  apply: { medianUs: number; p90Us: number };
  revert: { medianUs: number; p90Us: number };
  /** apply / floor, revert / floor (medians). */
  applyRatio: number;
  revertRatio: number;
  /** Median time per phase inside the stop (ms), apply and revert together. */
  phases: Record<string, number>;
}

/**
 * The same target (2 threads) patched through the real CLI, a fresh
 * `hotstack` per action as a person runs it: cold code (compiled on first
 * use, or taken from the bundles' code caches), and on a machine with few
 * CPUs the target's thread also loses its CPU to Node's own start, which
 * `version` (a `hotstack --version` meanwhile, no stop at all) shows.
 */
export interface StallCliRow {
  iterations: number;
  floor: { medianUs: number; p90Us: number };
  version: { medianUs: number; p90Us: number };
  apply: { medianUs: number; p90Us: number };
  revert: { medianUs: number; p90Us: number };
}

export interface StallBenchResult {
  machine: string;
  iterations: number;
  rows: StallRow[];
  cli: StallCliRow;
}

const us = (ns: number[]): { medianUs: number; p90Us: number } => ({ medianUs: median(ns) / 1000, p90Us: quantile(ns, 0.9) / 1000 });

async function gapOf(p: StressProcess, op: () => void | Promise<void>): Promise<number> {
  await p.ask('r');
  await op();
  await sleep(2); // let the gap thread see the clock again
  return Number(await p.ask('g'));
}

async function row(exe: string, floor: string, payload: string, label: string, sleepers: number, iterations: number): Promise<StallRow> {
  const p = await startStress(exe);
  try {
    if (sleepers) await p.ask(`s ${sleepers}`);
    await sleep(200);
    const addr = runtimeAddress(p.pid, exe, 'stall_one');
    const noise: number[] = [], fl: number[] = [], ap: number[] = [], rv: number[] = [];
    const phaseSamples = new Map<string, number[]>();
    const bytes = readFileSync(payload);
    openProcessEngine(p.pid, (e) => e.upload('stall', bytes));
    for (let i = 0; i < iterations; i++) {
      noise.push(await gapOf(p, () => sleep(5)));
      fl.push(await gapOf(p, () => {
        const r = spawnSync(floor, [String(p.pid), addr.toString(16)], { encoding: 'utf8' });
        if (r.status !== 0) throw new Error(`floor: ${r.stderr}`);
      }));
      for (const [cmd, out] of [['APPLY', ap], ['REVERT', rv]] as const) {
        out.push(await gapOf(p, () => openProcessEngine(p.pid, (e) => {
          const t = e.target as ProcessTarget;
          const from = t.phases.length;
          e.action('stall', cmd);
          for (const ph of t.phases.slice(from)) for (const [k, v] of Object.entries(ph)) {
            const l = phaseSamples.get(k) ?? [];
            l.push(v);
            phaseSamples.set(k, l);
          }
        })));
      }
    }
    const answer = await p.ask('c 40');
    if (answer !== '41 42') throw new Error(`stall target answers ${JSON.stringify(answer)} after the runs`);
    const phases: Record<string, number> = {};
    for (const [k, v] of phaseSamples) phases[k] = median(v);
    return {
      label, threads: sleepers + 2, noise: us(noise), floor: us(fl), apply: us(ap), revert: us(rv),
      applyRatio: median(ap) / median(fl), revertRatio: median(rv) / median(fl), phases,
    };
  } finally {
    p.child.kill('SIGKILL');
  }
}

async function cliRow(exe: string, floor: string, payload: string, iterations: number): Promise<StallCliRow> {
  const p = await startStress(exe);
  try {
    await sleep(200);
    const addr = runtimeAddress(p.pid, exe, 'stall_one');
    const hs = (...args: string[]): void => {
      const r = spawnSync(process.execPath, [HOTSTACK_BIN, ...args], { encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`hotstack ${args.join(' ')}: ${r.stderr}`);
    };
    hs('--pid', String(p.pid), 'upload', 'stall', payload);
    const fl: number[] = [], ver: number[] = [], ap: number[] = [], rv: number[] = [];
    for (let i = 0; i < iterations; i++) {
      fl.push(await gapOf(p, () => {
        const r = spawnSync(floor, [String(p.pid), addr.toString(16)], { encoding: 'utf8' });
        if (r.status !== 0) throw new Error(`floor: ${r.stderr}`);
      }));
      ver.push(await gapOf(p, () => hs('--version')));
      ap.push(await gapOf(p, () => hs('--pid', String(p.pid), 'apply', 'stall')));
      rv.push(await gapOf(p, () => hs('--pid', String(p.pid), 'revert', 'stall')));
    }
    return { iterations, floor: us(fl), version: us(ver), apply: us(ap), revert: us(rv) };
  } finally {
    p.child.kill('SIGKILL');
  }
}

/** Runs the stall benchmark in `workDir` (removed afterwards). */
export async function benchStall(workDir: string, opts: { iterations?: number } = {}): Promise<StallBenchResult> {
  const iterations = opts.iterations ?? 40;
  const saved = process.env.HOTSTACK_STATE_DIR;
  mkdirSync(workDir, { recursive: true });
  process.env.HOTSTACK_STATE_DIR = join(workDir, 'state');
  try {
    const exe = join(workDir, 'stall');
    const floor = join(workDir, 'floor');
    const payload = join(workDir, 'stall-fix.livepatch');
    run('gcc', ['-O2', '-g', '-pthread', '-Wl,--build-id=sha1', '-o', exe, resolve('bench/fixtures/stall.c')]);
    run('gcc', ['-O2', '-o', floor, resolve('bench/fixtures/floor.c')]);
    buildPayload({ base: exe, out: payload, sources: [resolve('bench/fixtures/stall-fix.c')] });
    const rows = [
      await row(exe, floor, payload, '2 threads', 0, iterations),
      await row(exe, floor, payload, '16 sleeping threads + 2', 16, iterations),
    ];
    const cli = await cliRow(exe, floor, payload, Math.min(iterations, 15));
    return { machine: machineNote(), iterations, rows, cli };
  } finally {
    if (saved === undefined) delete process.env.HOTSTACK_STATE_DIR;
    else process.env.HOTSTACK_STATE_DIR = saved;
    rmSync(workDir, { recursive: true, force: true });
  }
}

/** Prints the figures (one line per call of `out`). */
export function printStallBench(r: StallBenchResult, out: (line: string) => void = console.log): void {
  const f = (x: number): string => x.toFixed(0).padStart(7);
  out(`live process: longest stall seen inside the target per operation (us, median / p90 of ${r.iterations}; ${r.machine})`);
  out('  target                       noise          floor          apply          revert      apply/floor revert/floor');
  for (const x of r.rows) {
    out(`  ${x.label.padEnd(26)} ${f(x.noise.medianUs)} ${f(x.noise.p90Us)} ${f(x.floor.medianUs)} ${f(x.floor.p90Us)} ${f(x.apply.medianUs)} ${f(x.apply.p90Us)} ${f(x.revert.medianUs)} ${f(x.revert.p90Us)} ${x.applyRatio.toFixed(1).padStart(8)}x ${x.revertRatio.toFixed(1).padStart(8)}x`);
    out(`    inside the stop (median ms): ${Object.entries(x.phases).map(([k, v]) => `${k} ${v.toFixed(3)}`).join(', ')}`);
  }
  out('  (noise: the largest gap over 5 ms with nothing happening; floor: seize+interrupt all, 5-byte write, detach, in C)');
  const c = r.cli;
  out(`  through the CLI, a fresh hotstack per action, 2 threads (median / p90 of ${c.iterations}): floor ${f(c.floor.medianUs)} ${f(c.floor.p90Us)},`
    + ` --version alone ${f(c.version.medianUs)} ${f(c.version.p90Us)}, apply ${f(c.apply.medianUs)} ${f(c.apply.p90Us)}, revert ${f(c.revert.medianUs)} ${f(c.revert.p90Us)}`);
  out('  (--version stops nothing: its gap is the CPU Node\'s start takes from the target\'s thread on this machine)');
}
