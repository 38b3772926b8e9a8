/**
 * Helpers for the stress and crash tests on live processes
 * (test/live-stress.test.ts, test/live-crash.test.ts) and for the process
 * benchmark (bench/process.ts):
 *
 * - building the multi-threaded stress base of test/fixtures/stress and
 *   its payloads with the stock toolchain (the toolchain helpers' recipe);
 * - running the real `bin/hotstack` CLI as a child process, with a hard
 *   timeout and optional fault injection or a SIGKILL at a chosen instant;
 * - looking at a live process from outside: load bias, symbol addresses,
 *   /proc/PID/mem, thread names and scheduler states.
 *
 * Nothing here imports hotstack's own code, so what the tests observe is
 * independent of what the engine believes.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import {
  closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, readSync, realpathSync, watch, type FSWatcher,
} from 'node:fs';
import { cpus, release } from 'node:os';
import { join, resolve } from 'node:path';
import { HOTSTACK_BIN, REPO_ROOT } from './repo.js';
import {
  FIXTURES_DIR, buildPayload, codeSizes, run, startBase, symbolInfo, functionBytes, type BaseProcess,
} from './toolchain.js';
import type { ListEntryJson } from '../../src/cli/json-types.js';

// ---------------------------------------------------------------------------
// Locations

// The CLI entry point runs dist/src/cli/main.js: build first.
export { HOTSTACK_BIN, REPO_ROOT };
/** test/fixtures/stress: the stress base and its payloads. */
export const STRESS_DIR = join(FIXTURES_DIR, 'stress');

// ---------------------------------------------------------------------------
// Building

export interface StressFixtures {
  /** The multi-threaded base (PIE, build-id, symbols). */
  base: string;
  /** compute -> version 1, depends on the base. */
  v1: string;
  /** compute -> version 2, depends on stress_v1 (stacks on top of it). */
  v2: string;
  /** Replaces spin(), which the spinner thread never leaves. */
  spin: string;
  /** Replaces blocker(), in whose read() the blocker thread sleeps. */
  block: string;
  /** Replaces bench_fn() with the same body. */
  bench: string;
}

const built = new Map<string, StressFixtures>();

/** Builds the stress base and payloads into `outDir` (once per process and directory). */
export function buildStress(outDir: string): StressFixtures {
  const dir = resolve(outDir);
  const hit = built.get(dir);
  if (hit) return hit;
  mkdirSync(dir, { recursive: true });
  const base = join(dir, 'stress');
  // cwd: the STT_FILE symbol reads "stress.c"; explicit -fcf-protection=none as the toolchain helpers do.
  run('gcc', [
    '-O2', '-Wall', '-Wextra', '-pthread', '-fcf-protection=none', '-fPIE', '-pie',
    '-Wl,--build-id=sha1', '-o', base, 'stress.c',
  ], { cwd: STRESS_DIR });
  const src = (f: string) => join(STRESS_DIR, f);
  const v1 = buildPayload({
    name: 'stress_v1', sources: [src('version.c')], base,
    defines: { STRESS_NAME: 'stress_v1', STRESS_VERSION: '1' }, sizes: codeSizes('stress_v1_compute', 'compute'),
  }, dir);
  const v2 = buildPayload({
    name: 'stress_v2', sources: [src('version.c')], base, depends: v1,
    defines: { STRESS_NAME: 'stress_v2', STRESS_VERSION: '2' }, sizes: codeSizes('stress_v2_compute', 'compute'),
  }, dir);
  const spin = buildPayload({ name: 'stress_spin', sources: [src('spin.c')], base, sizes: codeSizes('stress_spin_spin', 'spin') }, dir);
  const block = buildPayload({ name: 'stress_block', sources: [src('block.c')], base, sizes: codeSizes('stress_block_blocker', 'blocker') }, dir);
  const bench = buildPayload({ name: 'stress_bench', sources: [src('bench.c')], base, sizes: codeSizes('stress_bench_bench_fn', 'bench_fn') }, dir);
  const out = { base, v1, v2, spin, block, bench };
  built.set(dir, out);
  return out;
}

// ---------------------------------------------------------------------------
// The stress process

/** What the stress base's `s` command reports (sums over compute workers). */
export interface StressStatus {
  threads: number;
  calls: number;
  /** Fewest calls of one worker: every worker must make progress. */
  min: number;
  bad: number;
  crashes: number;
  /** Answers seen per version of compute (0 = base). */
  seen: number[];
  lastbad: number;
}

export interface StressProcess extends BaseProcess {
  status(): Promise<StressStatus>;
  /** compute(x) as the process answers it now. */
  compute(x: number): Promise<number>;
}

/** Starts a stress base (idle: no worker threads yet) and waits for "ready". */
export async function startStress(path: string): Promise<StressProcess> {
  const p = await startBase(path);
  return Object.assign(p, {
    async status(): Promise<StressStatus> {
      const line = await p.ask('s');
      try {
        return JSON.parse(line) as StressStatus;
      } catch {
        throw new Error(`stress status is not JSON: ${JSON.stringify(line)}`);
      }
    },
    async compute(x: number): Promise<number> {
      const line = await p.ask(`c ${x}`);
      if (!/^-?\d+$/.test(line)) throw new Error(`compute(${x}) answered ${JSON.stringify(line)}`);
      return Number(line);
    },
  });
}

/** compute(x) of version v, as the base and payloads define it. */
export function computeAnswer(x: number, version: number): number {
  return (x * 8 + version) | 0;
}

/** Kills every process handed to it, whatever state the test left it in. */
export class Reaper {
  private readonly all: { kill(): void }[] = [];

  add<T extends BaseProcess | ChildProcess>(p: T): T {
    this.all.push({
      kill: () => {
        const child: ChildProcess = 'child' in p ? (p as BaseProcess).child : (p as ChildProcess);
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      },
    });
    return p;
  }

  /** Kills every process added, and every CLI run of this module still going. */
  killAll(): void {
    for (const c of runningClis) {
      try {
        c.kill('SIGKILL');
      } catch {
        /* gone */
      }
    }
    for (const p of this.all.splice(0)) {
      try {
        p.kill();
      } catch {
        /* gone */
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Running the CLI

export interface CliResult {
  /** The command line, for messages. */
  cmd: string;
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** Wall time from spawn to exit, ms. */
  ms: number;
  /** True when we killed it (killAfterMs / killWhen), false when it exited on its own. */
  killedByUs: boolean;
  /** When stdout first contained `mark` (or killWhen's text), ms after spawn. */
  markMs?: number;
}

export interface CliOptions {
  /** Extra environment (HOTSTACK_STATE_DIR is inherited from process.env). */
  env?: Record<string, string>;
  /** Hard limit: SIGKILL and reject after this long (default 60 s). */
  timeoutMs?: number;
  /** SIGKILL the tool this long after it started. */
  killAfterMs?: number;
  /** SIGKILL the tool `delayMs` after its stdout first contains `text`. */
  killWhen?: { text: string; delayMs: number };
  /** Note when stdout first contains this (result.markMs). */
  mark?: string;
  /**
   * SIGKILL the tool at the first change of a file in `dir` after its
   * stdout contains `afterText` (e.g. the state directory once the action
   * has begun: the instant the tool writes its intent).
   */
  killOnChange?: { dir: string; afterText: string; delayMs?: number };
}

/** CLI runs not yet exited (so a failed test's after() can kill them). */
const runningClis = new Set<ChildProcess>();

/** Runs `bin/hotstack ARGS` as a separate process. */
export function cli(args: string[], opts: CliOptions = {}): Promise<CliResult> {
  const cmd = ['hotstack', ...args].join(' ');
  return new Promise((resolvePromise, reject) => {
    const t0 = performance.now();
    const child = spawn(process.execPath, [HOTSTACK_BIN, ...args], {
      env: { ...process.env, ...opts.env }, stdio: ['ignore', 'pipe', 'pipe'],
    });
    runningClis.add(child);
    let stdout = '';
    let stderr = '';
    let killedByUs = false;
    let timedOut = false;
    const timers: NodeJS.Timeout[] = [];
    const kill = () => {
      if (child.exitCode === null && child.signalCode === null) {
        killedByUs = true;
        child.kill('SIGKILL');
      }
    };
    let armed = false;
    let markMs: number | undefined;
    let watcher: FSWatcher | undefined;
    let watching = false;
    let armedWatch = false;
    if (opts.killOnChange) {
      mkdirSync(opts.killOnChange.dir, { recursive: true });
      const delay = opts.killOnChange.delayMs ?? 0;
      watcher = watch(opts.killOnChange.dir, () => {
        if (!watching) return;
        watching = false;
        if (delay <= 0) kill();
        else timers.push(setTimeout(kill, delay));
      });
    }
    const mark = opts.mark ?? opts.killWhen?.text;
    child.stdout!.setEncoding('utf8').on('data', (s: string) => {
      stdout += s;
      if (mark !== undefined && markMs === undefined && stdout.includes(mark)) markMs = performance.now() - t0;
      if (opts.killOnChange && !armedWatch && stdout.includes(opts.killOnChange.afterText)) { armedWatch = true; watching = true; }
      if (opts.killWhen && !armed && stdout.includes(opts.killWhen.text)) {
        armed = true;
        if (opts.killWhen.delayMs <= 0) kill();
        else timers.push(setTimeout(kill, opts.killWhen.delayMs));
      }
    });
    child.stderr!.setEncoding('utf8').on('data', (s: string) => { stderr += s; });
    if (opts.killAfterMs !== undefined) timers.push(setTimeout(kill, opts.killAfterMs));
    timers.push(setTimeout(() => { timedOut = true; kill(); }, opts.timeoutMs ?? 60_000));
    const cleanup = () => {
      runningClis.delete(child);
      for (const t of timers) clearTimeout(t);
      watcher?.close();
    };
    child.once('error', (e) => { cleanup(); reject(e); });
    child.once('close', (code, signal) => {
      cleanup();
      const ms = performance.now() - t0;
      if (timedOut) {
        reject(new Error(`${cmd}: no exit within ${opts.timeoutMs ?? 60_000} ms (killed)\nstdout: ${stdout}\nstderr: ${stderr}`));
        return;
      }
      resolvePromise({ cmd, code, signal, stdout, stderr, ms, killedByUs, markMs });
    });
  });
}

/** A CLI result in one line, for assertion messages. */
export function show(r: CliResult): string {
  return `${r.cmd} -> ${r.signal ?? `exit ${r.code}`} after ${r.ms.toFixed(0)} ms; stdout ${JSON.stringify(r.stdout)}; stderr ${JSON.stringify(r.stderr)}`;
}

/** `hotstack --pid PID list --json`: the entries, and stderr (repair notices). */
export async function listJson(pid: number, opts: CliOptions = {}): Promise<{ list: ListEntryJson[]; stderr: string; result: CliResult }> {
  const r = await cli(['--pid', String(pid), 'list', '--json'], opts);
  if (r.code !== 0) throw new Error(`list failed: ${show(r)}`);
  let list: ListEntryJson[];
  try {
    list = JSON.parse(r.stdout) as ListEntryJson[];
  } catch {
    throw new Error(`list --json printed no JSON: ${show(r)}`);
  }
  return { list, stderr: r.stderr, result: r };
}

// ---------------------------------------------------------------------------
// Looking at a live process from outside

/** Load bias of executable/library `elf` in process `pid` (from /proc/PID/maps and the ELF's LOAD headers). */
export function loadBias(pid: number, elf: string): bigint {
  const real = realpathSync(elf);
  let firstVaddr: bigint | undefined;
  for (const line of run('readelf', ['-lW', elf]).split('\n')) {
    const f = line.trim().split(/\s+/);
    if (f[0] === 'LOAD' && BigInt(f[1]!) === 0n) { firstVaddr = BigInt(f[2]!) & ~0xfffn; break; }
  }
  if (firstVaddr === undefined) throw new Error(`${elf}: no LOAD segment at file offset 0`);
  for (const line of readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n')) {
    const m = /^([0-9a-f]+)-[0-9a-f]+ \S+ ([0-9a-f]+) \S+ \d+\s+(.*)$/.exec(line);
    if (m && BigInt('0x' + m[2]) === 0n && m[3] === real) return BigInt('0x' + m[1]) - firstVaddr;
  }
  throw new Error(`${real} is not mapped in process ${pid}`);
}

/** Run-time address of a symbol of `elf` in process `pid`. */
export function runtimeAddress(pid: number, elf: string, name: string): bigint {
  return loadBias(pid, elf) + symbolInfo(elf, name).address;
}

/** Bytes of the process's memory, read through /proc/PID/mem. */
export function readMem(pid: number, addr: bigint, len: number): Buffer {
  const fd = openSync(`/proc/${pid}/mem`, 'r');
  try {
    const out = Buffer.alloc(len);
    const n = readSync(fd, out, 0, len, Number(addr));
    if (n !== len) throw new Error(`short read of ${len} bytes at 0x${addr.toString(16)} in ${pid}: ${n}`);
    return out;
  } finally {
    closeSync(fd);
  }
}

/** Where an `e9 rel32` jump at `at` goes, or null when `bytes` is not one. */
export function jumpTarget(bytes: Uint8Array, at: bigint): bigint | null {
  if (bytes.length < 5 || bytes[0] !== 0xe9) return null;
  return at + 5n + BigInt(Buffer.from(bytes).readInt32LE(1));
}

/**
 * What the first `len` bytes of a base function look like in memory: as in
 * the file (`unpatched`), a jump out (`patched`, with its target), or
 * something else (`torn`: neither, which must never be seen).
 */
export function functionState(pid: number, elf: string, name: string, len = 5): { state: 'unpatched' | 'patched' | 'torn'; to: bigint | null; bytes: Buffer } {
  const at = runtimeAddress(pid, elf, name);
  const bytes = readMem(pid, at, len);
  if (bytes.equals(functionBytes(elf, name, len))) return { state: 'unpatched', to: null, bytes };
  const to = jumpTarget(bytes, at);
  return { state: to !== null ? 'patched' : 'torn', to, bytes };
}

/** Thread ids of a process by thread name (/proc/PID/task/TID/comm). */
export function threadsNamed(pid: number, name: string): number[] {
  return readdirSync(`/proc/${pid}/task`).map(Number).filter((tid) => {
    try {
      return readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8').trim() === name;
    } catch {
      return false;
    }
  });
}

/** Scheduler state letter of every thread ('t'/'T' would be a stop left behind). */
export function threadStates(pid: number): Map<number, string> {
  const out = new Map<number, string>();
  for (const tid of readdirSync(`/proc/${pid}/task`).map(Number)) {
    try {
      const s = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
      out.set(tid, s.slice(s.lastIndexOf(')') + 2, s.lastIndexOf(')') + 3));
    } catch {
      /* exited meanwhile */
    }
  }
  return out;
}

/** Threads left stopped (state t or T) or traced by someone (TracerPid != 0). */
export function strayStops(pid: number): string[] {
  const bad: string[] = [];
  for (const [tid, st] of threadStates(pid)) {
    if (st === 't' || st === 'T') bad.push(`thread ${tid} is in state ${st}`);
    try {
      const tracer = /^TracerPid:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8'))?.[1];
      if (tracer && tracer !== '0') bad.push(`thread ${tid} is still traced by ${tracer}`);
    } catch {
      /* exited meanwhile */
    }
  }
  return bad;
}

/** True while the process exists and is not a zombie. */
export function alive(pid: number): boolean {
  if (!existsSync(`/proc/${pid}`)) return false;
  const st = threadStates(pid).get(pid);
  return st !== undefined && st !== 'Z' && st !== 'X';
}

// ---------------------------------------------------------------------------
// Numbers

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** The q-quantile (0..1) of `xs`, nearest-rank. */
export function quantile(xs: number[], q: number): number {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const i = Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1));
  return s[i]!;
}

export const median = (xs: number[]): number => quantile(xs, 0.5);

/** A line describing this machine for benchmark figures. */
export function machineNote(): string {
  const c = cpus();
  return `${c.length} x ${c[0]?.model ?? 'unknown cpu'}, Linux ${release()}, node ${process.version}`;
}
