/**
 * Benchmark: `hotstack --all load` over N sleeping processes of a small
 * C program (test/fixtures/fleet), three rounds on fresh processes (the
 * median kept), against single `hotstack --pid PID load` runs (a sample,
 * extrapolated to N). Both go through the real CLI, Node
 * start included, as a person would run them; the figure to compare
 * across machines is the ratio, measured in the same run.
 *
 * Then a --jobs sweep on a subset (an explicit --pid set), each point
 * after reverting and unloading the subset again; the points are taken in
 * interleaved rounds and the median kept, since the machine's other load
 * moves single figures by tens of percent.
 *
 * The state directory is on tmpfs when /dev/shm is one: hotstack's default,
 * /run/hotstack, is tmpfs on systemd machines, and every state save is a
 * rename that a disk filesystem (ext4's replace-by-rename flush) makes far
 * slower. The directory used and its filesystem are printed.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, readSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { buildFleet } from '../test/helpers/fleet.js';
import { HOTSTACK_BIN } from '../test/helpers/live.js';
import { machineNote, median, sleep } from '../test/helpers/stress.js';
import { run, symbolInfo } from '../test/helpers/toolchain.js';

export interface FleetRun {
  jobs: number | 'default';
  processes: number;
  totalMs: number;
  perProcessMs: number;
  /** Median time one worker spent on one process (the JSON's `ms`). */
  medianInWorkerMs: number;
  patched: number;
  skipped: number;
  failed: number;
}

export interface FleetBenchResult {
  machine: string;
  stateDir: string;
  stateFs: string;
  processes: number;
  /** The median of the rounds (by total time). */
  fleet: FleetRun;
  /** Total time of each round's --all load, ms (fresh processes each round). */
  fleetRoundsMs: number[];
  single: { sampled: number; meanMs: number; medianMs: number; extrapolatedMs: number };
  /** Extrapolated single runs / one fleet run: how many times faster. */
  speedup: number;
  sweep: FleetRun[];
}

export interface FleetBenchOptions {
  /** Processes in the fleet (default 1000). */
  processes?: number;
  /** Single --pid runs sampled (default 50). */
  sample?: number;
  /** Processes of the --jobs sweep (default 200, at most `processes`). */
  sweepProcesses?: number;
  sweepJobs?: number[];
  /** Interleaved rounds of the sweep (default 3). */
  sweepRounds?: number;
  /** Rounds of the main --all load, each on freshly started processes (default 3). */
  fleetRounds?: number;
}

function fsType(dir: string): string {
  const r = spawnSync('stat', ['-f', '-c', '%T', dir], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : 'unknown';
}

/** Start `n` copies of `exe` with stdin on /dev/null: each prints "ready" and sleeps in pause(). */
async function startSleepers(exe: string, n: number): Promise<ChildProcess[]> {
  const out: ChildProcess[] = [];
  for (let i = 0; i < n; i++) out.push(spawn(exe, [], { stdio: 'ignore' }));
  // Sleeping (S) with the program mapped: past the dynamic loader, in its loop.
  const deadline = performance.now() + 60_000;
  for (const c of out) {
    for (;;) {
      let st = '';
      try {
        const s = readFileSync(`/proc/${c.pid}/stat`, 'utf8');
        st = s.charAt(s.lastIndexOf(')') + 2);
      } catch { /* not yet */ }
      if (st === 'S') break;
      if (performance.now() > deadline) throw new Error(`fleet bench: process ${c.pid} of ${exe} is not sleeping after 60 s`);
      await sleep(5);
    }
  }
  return out;
}

async function stopAll(ps: ChildProcess[]): Promise<void> {
  await Promise.all(ps.map((c) => new Promise<void>((res) => {
    if (c.exitCode !== null || c.signalCode !== null) return res();
    c.once('exit', () => res());
    c.kill('SIGKILL');
  })));
}

function cli(args: string[], env: Record<string, string>): { ms: number; status: number | null; stdout: string; stderr: string } {
  const t0 = performance.now();
  const r = spawnSync(process.execPath, [HOTSTACK_BIN, ...args], { encoding: 'utf8', env: { ...process.env, ...env }, maxBuffer: 256 * 1024 * 1024, timeout: 600_000 });
  const ms = performance.now() - t0;
  if (r.error) throw r.error;
  return { ms, status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** A timed fleet load, parsed from --json. */
function fleetLoad(args: string[], fix: string, env: Record<string, string>, jobs: number | 'default'): FleetRun {
  const r = cli([...args, ...(jobs === 'default' ? [] : ['--jobs', String(jobs)]), 'load', fix, '--json'], env);
  let v: { summary: { patched: number; skipped: number; failed: number }; processes: { ms: number }[] };
  try {
    v = JSON.parse(r.stdout) as typeof v;
  } catch {
    throw new Error(`fleet bench: hotstack ${args.join(' ')} load: exit ${r.status}\n${r.stdout.slice(0, 2000)}\n${r.stderr.slice(0, 2000)}`);
  }
  const n = v.processes.length;
  return {
    jobs, processes: n, totalMs: r.ms, perProcessMs: r.ms / Math.max(1, n), medianInWorkerMs: median(v.processes.map((p) => p.ms)),
    patched: v.summary.patched, skipped: v.summary.skipped, failed: v.summary.failed,
  };
}

/** First byte of fleet_answer in each process: 0xe9 (the jump) once patched. Bias from the mapping of file offset 0. */
function patchedCount(pids: number[], exe: string): number {
  const link = symbolInfo(exe, 'fleet_answer').address;
  let firstVaddr = 0n;
  for (const line of run('readelf', ['-lW', exe]).split('\n')) {
    const f = line.trim().split(/\s+/);
    if (f[0] === 'LOAD') { firstVaddr = BigInt(f[2]!) & ~0xfffn; break; }
  }
  let n = 0;
  for (const pid of pids) {
    const m = readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n').find((l) => l.endsWith(exe) && / 00000000 /.test(l));
    if (!m) continue;
    const addr = BigInt('0x' + m.split('-')[0]!) - firstVaddr + link;
    const fd = openSync(`/proc/${pid}/mem`, 'r');
    try {
      const b = Buffer.alloc(1);
      readSync(fd, b, 0, 1, addr);
      if (b[0] === 0xe9) n++;
    } finally {
      closeSync(fd);
    }
  }
  return n;
}

export async function benchFleet(workDir: string, opts: FleetBenchOptions = {}): Promise<FleetBenchResult> {
  const n = opts.processes ?? 1000;
  const sample = opts.sample ?? 50;
  const sweepN = Math.min(n, opts.sweepProcesses ?? 200);
  const sweepJobs = opts.sweepJobs ?? [1, 2, 4, 8];
  const rounds = opts.sweepRounds ?? 3;
  const fleetRounds = Math.max(1, opts.fleetRounds ?? 3);
  mkdirSync(workDir, { recursive: true });
  const stateDir = existsSync('/dev/shm') && fsType('/dev/shm') === 'tmpfs' ? mkdtempSync('/dev/shm/hotstack-bench-fleet-') : join(workDir, 'state');
  const env = { HOTSTACK_STATE_DIR: stateDir };
  // Two builds, two build-ids: the fleet's --all never selects the sampled processes.
  const fleetFx = buildFleet(join(workDir, 'fleet'), `bench-fleet-${process.pid}`);
  const sampleFx = buildFleet(join(workDir, 'sample'), `bench-sample-${process.pid}`);
  const procs: ChildProcess[] = [];
  try {
    let fleet = await startSleepers(fleetFx.exe, n);
    procs.push(...fleet);
    const sampled = await startSleepers(sampleFx.exe, sample);
    procs.push(...sampled);

    const singles: number[] = [];
    for (const c of sampled) {
      const r = cli(['--pid', String(c.pid), 'load', sampleFx.fix], env);
      if (r.status !== 0) throw new Error(`fleet bench: single load on ${c.pid}: exit ${r.status}\n${r.stdout}${r.stderr}`);
      singles.push(r.ms);
    }
    const mean = singles.reduce((a, b) => a + b, 0) / singles.length;

    // The machine's speed drifts by a quarter within minutes: several rounds, the median kept.
    // Each on fresh processes: a load into a process that has had one takes a shorter path
    // (its runtime page and state copy are there).
    const mains: FleetRun[] = [];
    for (let round = 0; round < fleetRounds; round++) {
      if (round > 0) {
        await stopAll(fleet);
        fleet = await startSleepers(fleetFx.exe, n);
        procs.push(...fleet);
      }
      const r = fleetLoad(['--all'], fleetFx.fix, env, 'default');
      const really = patchedCount(fleet.map((c) => c.pid!), fleetFx.exe);
      if (r.patched !== n || really !== n) throw new Error(`fleet bench: ${r.patched} reported patched, ${really} with the jump, of ${n}`);
      mains.push(r);
    }
    const main = [...mains].sort((a, b) => a.totalMs - b.totalMs)[Math.floor((mains.length - 1) / 2)]!;
    const fleetPids = fleet.map((c) => c.pid!);

    const subset = ['--pid', fleetPids.slice(0, sweepN).join(',')];
    const points = new Map<number, FleetRun[]>(sweepJobs.map((j) => [j, []]));
    for (let round = 0; round < rounds; round++) {
      for (const jobs of sweepJobs) {
        for (const undo of ['revert', 'unload']) {
          const r = cli([...subset, undo, 'fleet_fix'], env);
          if (r.status !== 0) throw new Error(`fleet bench: ${undo} of the subset: exit ${r.status}\n${r.stdout.slice(-2000)}${r.stderr}`);
        }
        const row = fleetLoad(subset, fleetFx.fix, env, jobs);
        if (row.patched !== sweepN) throw new Error(`fleet bench: --jobs ${jobs}: ${row.patched} of ${sweepN} patched`);
        points.get(jobs)!.push(row);
      }
    }
    const sweep: FleetRun[] = sweepJobs.map((jobs) => {
      const rows = points.get(jobs)!;
      const totalMs = median(rows.map((r) => r.totalMs));
      return { ...rows[0]!, totalMs, perProcessMs: totalMs / sweepN, medianInWorkerMs: median(rows.map((r) => r.medianInWorkerMs)) };
    });
    return {
      machine: machineNote(), stateDir, stateFs: fsType(stateDir), processes: n, fleet: main, fleetRoundsMs: mains.map((r) => r.totalMs),
      single: { sampled: sample, meanMs: mean, medianMs: median(singles), extrapolatedMs: mean * n },
      speedup: (mean * n) / main.totalMs, sweep,
    };
  } finally {
    await stopAll(procs);
    rmSync(stateDir, { recursive: true, force: true });
    rmSync(workDir, { recursive: true, force: true });
  }
}

export function printFleetBench(r: FleetBenchResult): void {
  const f = r.fleet;
  console.log(`  state directory ${r.stateDir} (${r.stateFs})`);
  const rounds = r.fleetRoundsMs.map((ms) => (ms / 1000).toFixed(2)).join(', ');
  console.log(`  one --all load of ${r.processes} processes: ${(f.totalMs / 1000).toFixed(2)} s total, ${f.perProcessMs.toFixed(2)} ms per process`
    + ` (median of ${r.fleetRoundsMs.length} rounds on fresh processes: ${rounds} s; default --jobs; ${f.medianInWorkerMs.toFixed(2)} ms median per process inside a thread)`);
  console.log(`  single --pid load, ${r.single.sampled} sampled: ${r.single.meanMs.toFixed(1)} ms mean (median ${r.single.medianMs.toFixed(1)}),`
    + ` ${(r.single.extrapolatedMs / 1000).toFixed(1)} s extrapolated to ${r.processes}`);
  console.log(`  speedup of the fleet run: ${r.speedup.toFixed(1)}x`);
  console.log(`  --jobs sweep (${r.sweep[0]?.processes ?? 0} processes, explicit --pid set; median of interleaved rounds):`);
  console.log('      jobs   total s   ms/process   in-worker ms   vs jobs 1');
  const base = r.sweep[0]?.totalMs ?? NaN;
  for (const s of r.sweep) {
    console.log(`  ${String(s.jobs).padStart(8)} ${(s.totalMs / 1000).toFixed(2).padStart(9)} ${s.perProcessMs.toFixed(2).padStart(12)} ${s.medianInWorkerMs.toFixed(2).padStart(14)} ${(base / s.totalMs).toFixed(2).padStart(11)}`);
  }
}
