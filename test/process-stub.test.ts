/**
 * Self-restoring stubs: a hotstack SIGKILLed at any instant of a remote
 * system call or remote function call must leave the target running
 * correctly (the hijacked thread finishes the operation, restores its own
 * registers and re-issues the system call it was stopped in).
 *
 * The "hotstack" here is a child Node process running remote operations on
 * test/fixtures/stub/target.c; it is killed either by itself at a chosen
 * stage (HOTSTACK_TEST_DIE_AT, see remote.ts) or by us after a random delay.
 *
 * Every window in which this process traces the target is synchronous (see
 * process-lowlevel.test.ts: libuv would reap ptrace stops of our child).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { REPO_ROOT } from './helpers/repo.js';
import {
  StoppedProcess,
  ptrace,
  findFreeGapsFor,
  readMaps,
  readMemory,
  remoteMmap,
  remoteSyscall,
  remoteSyscalls,
  remoteCall,
  PROT_READ,
  PROT_EXEC,
  MAP_PRIVATE,
  MAP_ANONYMOUS,
  MAP_FIXED_NOREPLACE,
  type Regs,
} from '../src/targets/process/index.js';
import { RUNTIME_PAGE_SIZE, useRuntimePage } from '../src/targets/process/index.js';
import { arch } from '../src/arch/index.js';

const SYS = arch.process.sys;
const selfRestoredRegs = arch.process.selfRestoredRegs;

const ROOT = REPO_ROOT;
let workDir = '';
let bin = '';
let driver = '';
const syms = new Map<string, bigint>();
const children: ChildProcess[] = [];

/** The killed "hotstack": stops the target, runs remote operations in a loop until killed (or `count` done). */
const DRIVER = `
const [remoteUrl, indexUrl, json] = process.argv.slice(2);
const R = await import(remoteUrl);
const I = await import(indexUrl);
const a = JSON.parse(json);
const page = BigInt(a.page);
for (let i = 0; i < a.count; i++) {
  const p = I.StoppedProcess.stop(a.pid);
  try {
    R.useRuntimePage(p, page);
    const tid = p.threads.find((t) => t.name === a.thread).tid;
    if (i === 0) process.stdout.write('go\\n');
    for (let k = 0; k < a.ops; k++) {
      for (const op of a.kinds) {
        if (op === 'syscall') {
          const r = R.remoteSyscall(p, tid, a.getpid);
          if (r.value !== BigInt(a.pid)) throw new Error('getpid returned ' + r.value);
        } else if (op === 'batch') {
          const rs = R.remoteSyscalls(p, tid, [
            { nr: BigInt(a.getpid), args: [], expect: BigInt(a.pid) },
            { nr: BigInt(a.gettid), args: [], expect: BigInt(tid) },
            { nr: BigInt(a.getpid), args: [], expect: BigInt(a.pid) },
          ]);
          if (rs.length !== 3 || rs[1].value !== BigInt(tid)) throw new Error('batch returned ' + rs.map((r) => r.value).join(','));
        } else if (op === 'skip') {
          // close(-1) fails: the exit_group after it must never run, with hotstack alive or not.
          const rs = R.remoteSyscalls(p, tid, [
            { nr: BigInt(a.close), args: [-1n], expect: 0n },
            { nr: BigInt(a.exitGroup), args: [7n], expect: 0n },
          ]);
          if (rs.length !== 1 || rs[0].errno !== 9) throw new Error('skip batch returned ' + rs.map((r) => r.value).join(','));
        } else if (op === 'call') {
          const r = R.remoteCall(p, tid, BigInt(a.add), [7, 5], page, 2000);
          if (r.value !== 7005n) throw new Error('add_hook returned ' + r.value);
        } else if (op === 'slow') {
          const r = R.remoteCall(p, tid, BigInt(a.slow), [a.slowMs], page, 5000);
          if (r.value !== 77n) throw new Error('slow_hook returned ' + r.value);
        }
      }
    }
  } finally {
    p.detach();
  }
}
process.stdout.write('done\\n');
`;

before(() => {
  workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'hotstack-stub-'));
  bin = path.join(workDir, 'target');
  execFileSync('gcc', ['-O1', '-g', '-pthread', '-fPIE', '-pie', '-Wall', '-o', bin, path.join(ROOT, 'test', 'fixtures', 'stub', 'target.c')]);
  for (const line of execFileSync('nm', [bin], { encoding: 'utf8' }).split('\n')) {
    const m = /^([0-9a-f]+) [TDBtdb] (\w+)$/.exec(line);
    if (m) syms.set(m[2]!, BigInt('0x' + m[1]));
  }
  driver = path.join(workDir, 'driver.mjs');
  fs.writeFileSync(driver, DRIVER);
  process.env.HOTSTACK_STATE_DIR = path.join(workDir, 'state');
});

after(() => {
  for (const c of children) {
    try {
      c.kill('SIGKILL');
    } catch {
      /* gone */
    }
  }
  if (workDir) fs.rmSync(workDir, { recursive: true, force: true });
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Target {
  child: ChildProcess;
  pid: number;
  ask(cmd: string): Promise<string>;
  addr(sym: string): bigint;
  page: bigint;
  exited: () => string | null;
}

function lineReader(stream: NodeJS.ReadableStream): () => Promise<string> {
  const lines: string[] = [];
  const waiters: ((l: string) => void)[] = [];
  let buf = '';
  stream.setEncoding('utf8');
  stream.on('data', (d: string) => {
    buf += d;
    let i: number;
    while ((i = buf.indexOf('\n')) >= 0) {
      const l = buf.slice(0, i);
      buf = buf.slice(i + 1);
      const w = waiters.shift();
      if (w) w(l);
      else lines.push(l);
    }
  });
  return () =>
    new Promise((resolve, reject) => {
      const l = lines.shift();
      if (l !== undefined) return resolve(l);
      const timer = setTimeout(() => reject(new Error('no answer within 5 s')), 5000);
      waiters.push((x) => {
        clearTimeout(timer);
        resolve(x);
      });
    });
}

async function startTarget(catches: string[] = []): Promise<Target> {
  const child = spawn(bin, catches, { stdio: ['pipe', 'pipe', 'inherit'] });
  children.push(child);
  let exit: string | null = null;
  child.on('exit', (code, sig) => {
    exit = `exit code ${code} signal ${sig}`;
  });
  const next = lineReader(child.stdout!);
  assert.equal(await next(), `ready ${child.pid}`);
  const pid = child.pid!;
  const real = fs.realpathSync(bin);
  const bias = readMaps(pid).find((m) => m.path === real && m.offset === 0n)!.start;
  // The runtime page, made as ProcessTarget makes it (its mmap borrows a syscall instruction).
  const p = StoppedProcess.stop(pid);
  let page: bigint;
  try {
    const text = readMaps(pid).find((m) => m.path === real && m.perms === 'r-xp')!;
    const hint = findFreeGapsFor(pid, text, RUNTIME_PAGE_SIZE)[0]!;
    page = remoteMmap(p, p.mainThread.tid, hint, RUNTIME_PAGE_SIZE, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE);
    p.memory.write(page, new Uint8Array(16).fill(0xcc));
  } finally {
    p.detach();
  }
  return {
    child,
    pid,
    page,
    exited: () => exit,
    ask: async (cmd) => {
      child.stdin!.write(cmd + '\n');
      return next();
    },
    addr: (sym) => bias + syms.get(sym)!,
  };
}

function stat(line: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const m of line.matchAll(/(\w+)=(-?\d+)/g)) out[m[1]!] = Number(m[2]);
  return out;
}

function threadStates(pid: number): Map<string, string> {
  const out = new Map<string, string>();
  for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
    const s = fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
    const comm = fs.readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8').trim();
    out.set(comm, s.slice(s.lastIndexOf(')') + 2, s.lastIndexOf(')') + 3));
  }
  return out;
}

function tracerOf(pid: number): number {
  return Number(/^TracerPid:\s+(\d+)/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))![1]);
}

interface DriverRun {
  /** How the driver ended: 'SIGKILL' or 'done'. */
  end: string;
}

/**
 * Run the driver against `t`: with `dieAt`, it kills itself at that stage;
 * with `killAfterMs`, we kill it that long after it first holds the target.
 */
async function runDriver(
  t: Target,
  opts: { thread: string; kinds: string[]; dieAt?: string; killAfterMs?: number; count?: number; ops?: number; slowMs?: number; env?: Record<string, string> },
): Promise<DriverRun> {
  const arg = {
    pid: t.pid,
    page: '0x' + t.page.toString(16),
    add: '0x' + t.addr('add_hook').toString(16),
    slow: '0x' + t.addr('slow_hook').toString(16),
    thread: opts.thread,
    kinds: opts.kinds,
    count: opts.count ?? 1,
    ops: opts.ops ?? 1,
    slowMs: opts.slowMs ?? 200,
    getpid: SYS.getpid,
    gettid: SYS.gettid,
    close: SYS.close,
    exitGroup: 231, // x86-64
  };
  const env = { ...process.env };
  delete env.HOTSTACK_TEST_DIE_AT;
  if (opts.dieAt) Object.assign(env, { HOTSTACK_TEST_DIE_AT: opts.dieAt, HOTSTACK_TEST_MODE: '1' });
  if (opts.env) Object.assign(env, opts.env, { HOTSTACK_TEST_MODE: '1' });
  const here = path.dirname(fileURLToPath(import.meta.url));
  const remoteUrl = pathToFileURL(path.join(here, '..', 'src', 'targets', 'process', 'index.js')).href;
  const indexUrl = pathToFileURL(path.join(here, '..', 'src', 'targets', 'process', 'index.js')).href;
  const c = spawn(process.execPath, [driver, remoteUrl, indexUrl, JSON.stringify(arg)], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(c);
  let stderr = '';
  c.stderr!.on('data', (d) => (stderr += d));
  const ended = new Promise<DriverRun>((resolve) => {
    c.on('exit', (code, sig) => resolve({ end: sig ?? (code === 0 ? 'done' : `exit ${code}: ${stderr}`) }));
  });
  if (opts.killAfterMs !== undefined) {
    const next = lineReader(c.stdout!);
    const first = await Promise.race([next(), ended.then((r) => `ended ${r.end}`)]);
    assert.equal(first, 'go', `driver started (${stderr})`);
    const until = performance.now() + opts.killAfterMs;
    while (performance.now() < until) {
      /* busy wait: timers are too coarse for sub-millisecond kills */
    }
    c.kill('SIGKILL');
  } else c.stdout!.resume();
  return ended;
}

/** The target survived, answers, no thread is stopped or traced, no EINTR was seen. */
async function assertHealthy(t: Target, what: string): Promise<Record<string, number>> {
  assert.equal(t.exited(), null, `${what}: target still alive`);
  assert.equal(await t.ask('ping'), 'pong', what);
  const s = stat(await t.ask('stat'));
  assert.equal(s.eintr, 0, `${what}: no EINTR (${JSON.stringify(s)})`);
  assert.equal(s.caught, 0, `${what}: no signal reached a handler of the program`);
  assert.equal(tracerOf(t.pid), 0, `${what}: nobody traces it`);
  for (const [name, st] of threadStates(t.pid)) assert.ok(!'tTZX'.includes(st), `${what}: thread ${name} is ${st}`);
  return s;
}

/** Wait until `thread` sits in system call `nr` (/proc/PID/task/TID/syscall). */
async function inSyscall(pid: number, thread: string, nr: number): Promise<void> {
  const deadline = performance.now() + 2000;
  for (;;) {
    for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
      if (fs.readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8').trim() !== thread) continue;
      if (fs.readFileSync(`/proc/${pid}/task/${tid}/syscall`, 'utf8').split(' ')[0] === String(nr)) return;
    }
    assert.ok(performance.now() < deadline, `${thread} did not get back into system call ${nr}`);
    await sleep(1);
  }
}

/** Registers of one thread, from a fresh stop. */
function regsOf(pid: number, thread: string): Regs {
  const p = StoppedProcess.stop(pid);
  try {
    return { ...p.threads.find((x) => x.name === thread)!.regs! };
  } finally {
    p.detach();
  }
}

const SYSCALL_STAGES = ['stub-setregs', 'stub-syscall-entry', 'stub-syscall-exit', 'stub-interrupted'];
const BATCH_STAGES = ['stub-setregs', 'batch-syscall-entry', 'batch-syscall-exit', 'stub-interrupted'];
const CALL_STAGES = ['call-setregs', 'call-hook-syscall', 'call-marker', 'stub-interrupted'];
const THREADS = ['target', 'napper', 'pauser'];

test('selfRestoredRegs applies the kernel restart rules', () => {
  const base = { rip: 0x1000n, orig_rax: 0n, rax: 0n } as Regs;
  const r = (rax: bigint, orig = 0n) => selfRestoredRegs({ ...base, rax: BigInt.asUintN(64, rax), orig_rax: BigInt.asUintN(64, orig) });
  for (const e of [-512n, -513n, -514n]) assert.deepEqual([r(e, 7n).rax, r(e, 7n).rip], [7n, 0xffen]);
  assert.deepEqual([r(-516n, 35n).rax, r(-516n, 35n).rip], [219n, 0xffen]);
  assert.deepEqual([r(-4n, 0n).rax, r(-4n, 0n).rip], [BigInt.asUintN(64, -4n), 0x1000n], 'EINTR is final');
  assert.deepEqual([r(-512n, -1n).rip], [0x1000n], 'not in a system call');
});

test('stubs while hotstack lives: results, exact registers, restarts', async () => {
  const t = await startTarget();
  const p = StoppedProcess.stop(t.pid);
  try {
    useRuntimePage(p, t.page);
    for (const th of p.threads) {
      const before = { ...th.regs! };
      assert.equal(remoteSyscall(p, th.tid, SYS.gettid).value, BigInt(th.tid));
      assert.deepEqual(remoteSyscall(p, th.tid, SYS.close, [-1]), { value: -9n, errno: 9 });
      const gp = { nr: BigInt(SYS.getpid), args: [], expect: BigInt(t.pid) };
      assert.deepEqual(remoteSyscalls(p, th.tid, [gp, { nr: BigInt(SYS.gettid), args: [], expect: BigInt(th.tid) }, gp]).map((r) => r.value), [BigInt(t.pid), BigInt(th.tid), BigInt(t.pid)]);
      // A surprise ends the batch: the exit_group after the failed close never runs.
      assert.deepEqual(remoteSyscalls(p, th.tid, [{ nr: BigInt(SYS.close), args: [-1n], expect: 0n }, { nr: 231n, args: [7n], expect: 0n }]), [{ value: -9n, errno: 9 }]);
      assert.equal(remoteSyscalls(p, th.tid, [gp, { nr: BigInt(SYS.getpid), args: [], expect: 0n }, gp]).length, 2, 'stops after the second');
      assert.equal(remoteCall(p, th.tid, t.addr('add_hook'), [3, 4], t.page, 2000).value, 3004n);
      if (th.name !== 'napper') assert.equal(remoteCall(p, th.tid, t.addr('slow_hook'), [5], t.page, 2000).value, 77n);
      assert.deepEqual(p.refreshRegs(th.tid), before, `registers of ${th.name}`);
    }
  } finally {
    p.detach();
  }
  const s = await assertHealthy(t, 'after stub operations');
  assert.equal(s.adds, 3);
  assert.equal(s.hooks, 2);
  await sleep(100);
  assert.ok(stat(await t.ask('stat')).naps! > s.naps!, 'the napper naps again');
  t.child.kill('SIGKILL');
});

/**
 * How each thread's batches end, and so where a killed hotstack can be:
 * the main thread blocks no signal (its batches end with a quiet signal,
 * one stop), unless forced to a stop at each call as napper and pauser
 * are (they block every signal).
 */
const VARIANTS = [
  { thread: 'target', stops: false },
  { thread: 'target', stops: true },
  { thread: 'napper', stops: true },
  { thread: 'pauser', stops: true },
];

test('a hotstack killed at each stage of a remote system call or call leaves the target running', async () => {
  const t = await startTarget();
  let hooks = 0;
  let adds = 0;
  for (const { thread, stops } of VARIANTS) {
    const syscallStages = stops ? SYSCALL_STAGES : ['stub-setregs', 'stub-syscall-signal'];
    const batchStages = stops ? BATCH_STAGES : ['stub-setregs', 'batch-syscall-signal'];
    const env: Record<string, string> = stops ? { HOTSTACK_TEST_BATCH: 'stops' } : {};
    for (const [kind, stages] of [['syscall', syscallStages], ['batch', batchStages], ['skip', batchStages], ['call', CALL_STAGES], ['slow', CALL_STAGES]] as const) {
      // Calls do not depend on how batches end: once per thread.
      if ((kind === 'call' || kind === 'slow') && thread === 'target' && stops) continue;
      for (const stage of stages) {
        if (kind === 'call' && stage === 'call-hook-syscall') continue; // add_hook makes no system call
        const what = `${kind} on ${thread}${stops ? ' (a stop at each call)' : ''}, killed at ${stage}`;
        // A hook that sleeps clobbers the napper's restart block (nanosleep resets it): EINTR, with or without stubs.
        if (kind === 'slow' && thread === 'napper') continue;
        if (thread !== 'napper') await inSyscall(t.pid, thread, thread === 'pauser' ? 34 : 0);
        const before = thread === 'napper' ? undefined : regsOf(t.pid, thread);
        const run = await runDriver(t, { thread, kinds: [kind], dieAt: stage, slowMs: 100, env });
        assert.equal(run.end, 'SIGKILL', `${what}: the stage was reached`);
        // The hijacked thread finishes the operation by itself (a slow hook takes 100 ms).
        await sleep(kind === 'slow' ? 200 : 20);
        if (before) {
          // Back in the same system call with the very same registers (before any command makes it return).
          await inSyscall(t.pid, thread, thread === 'pauser' ? 34 : 0);
          assert.deepEqual(regsOf(t.pid, thread), before, `${what}: registers`);
        }
        const s = await assertHealthy(t, what);
        if (kind === 'call') adds++;
        if (kind === 'slow') hooks++;
        assert.equal(s.adds, adds, `${what}: add_hook ran exactly once`);
        assert.equal(s.hooks, hooks, `${what}: slow_hook ran exactly once`);
      }
    }
  }
  const s1 = stat(await t.ask('stat'));
  await sleep(100);
  assert.ok(stat(await t.ask('stat')).naps! > s1.naps!, 'the napper naps again');
  t.child.kill('SIGKILL');
});

test('a batch ends with a signal the thread neither blocks nor catches; with none left, a stop at each call', async () => {
  const cases = [
    { catches: ['URG', 'WINCH'], stage: 'batch-syscall-signal' }, // SIGCHLD is left
    { catches: ['URG', 'WINCH', 'CHLD'], stage: 'batch-syscall-entry' },
  ];
  for (const { catches, stage } of cases) {
    const t = await startTarget(catches);
    const what = `a program catching ${catches.join(', ')}`;
    // Many batches while hotstack lives: none of the program's handlers runs.
    assert.equal((await runDriver(t, { thread: 'target', kinds: ['batch', 'skip', 'syscall'], count: 20, ops: 5 })).end, 'done', what);
    await assertHealthy(t, `${what}, after 300 batches`);
    // Killed where such a batch stops (reaching the stage shows which way it ends): the thread finishes by itself.
    await inSyscall(t.pid, 'target', 0);
    assert.equal((await runDriver(t, { thread: 'target', kinds: ['batch'], dieAt: stage })).end, 'SIGKILL', `${what}: killed at ${stage}`);
    await sleep(20);
    await assertHealthy(t, `${what}, killed at ${stage}`);
    t.child.kill('SIGKILL');
  }
});

test('a hotstack killed at random instants of remote operations leaves the target running', async () => {
  const t = await startTarget();
  const iterations = Number(process.env.HOTSTACK_STUB_ITERATIONS) || 60;
  for (let i = 0; i < iterations; i++) {
    const thread = THREADS[i % THREADS.length]!;
    const slow = i % 4 === 3 && thread !== 'napper';
    const kinds = slow ? ['syscall', 'slow'] : ['syscall', 'batch', 'call'];
    const killAfterMs = slow ? Math.random() * 60 : Math.random() * 3;
    const what = `iteration ${i}: ${kinds.join('+')} on ${thread}, killed after ${killAfterMs.toFixed(2)} ms`;
    const run = await runDriver(t, { thread, kinds, killAfterMs, count: 1000, ops: 1000, slowMs: 20 });
    assert.equal(run.end, 'SIGKILL', what);
    await sleep(slow ? 60 : 10);
    await assertHealthy(t, what);
  }
  t.child.kill('SIGKILL');
});

// ---------------------------------------------------------------------------
// the error paths of the low-level tests, through stubs
// (test/fixtures/lowlevel/target.c: threads target, sleeper, locker, reader)

interface LowTarget {
  pid: number;
  ask(cmd: string): Promise<string>;
  addr(sym: string): bigint;
  page(p: StoppedProcess): bigint;
}

let lowBin = '';
const lowSyms = new Map<string, bigint>();

async function startLowTarget(): Promise<LowTarget> {
  if (!lowBin) {
    lowBin = path.join(workDir, 'lowtarget');
    execFileSync('gcc', ['-O1', '-g', '-pthread', '-fPIE', '-pie', '-Wall', '-o', lowBin, path.join(ROOT, 'test', 'fixtures', 'lowlevel', 'target.c')]);
    for (const line of execFileSync('nm', [lowBin], { encoding: 'utf8' }).split('\n')) {
      const m = /^([0-9a-f]+) [TDBtdb] (\w+)$/.exec(line);
      if (m) lowSyms.set(m[2]!, BigInt('0x' + m[1]));
    }
  }
  const child = spawn(lowBin, [], { stdio: ['pipe', 'pipe', 'inherit'] });
  children.push(child);
  const next = lineReader(child.stdout!);
  assert.equal(await next(), `ready ${child.pid}`);
  const pid = child.pid!;
  const real = fs.realpathSync(lowBin);
  const bias = readMaps(pid).find((m) => m.path === real && m.offset === 0n)!.start;
  let page: bigint | undefined;
  return {
    pid,
    ask: async (cmd) => {
      child.stdin!.write(cmd + '\n');
      return next();
    },
    addr: (sym) => bias + lowSyms.get(sym)!,
    page: (p) => {
      if (page === undefined) {
        const text = readMaps(pid).find((m) => m.path === real && m.perms === 'r-xp')!;
        const hint = findFreeGapsFor(pid, text, RUNTIME_PAGE_SIZE)[0]!;
        page = remoteMmap(p, p.mainThread.tid, hint, RUNTIME_PAGE_SIZE, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE);
        p.memory.write(page, new Uint8Array(16).fill(0xcc));
      }
      useRuntimePage(p, page);
      return page;
    },
  };
}

function expectError(fn: () => unknown, errno: string, msg: RegExp): void {
  try {
    fn();
  } catch (e) {
    assert.equal((e as { errno?: string }).errno, errno, String(e));
    assert.match((e as Error).message, msg);
    return;
  }
  assert.fail(`expected ${errno}`);
}

test('stubs: crash, timeout, owed signals, exiting hook, SIGSTOPped process', async () => {
  const t = await startLowTarget();
  let p = StoppedProcess.stop(t.pid);
  try {
    const page = t.page(p);
    const tid = p.mainThread.tid;
    const before = { ...p.mainThread.regs! };
    assert.equal(remoteCall(p, tid, t.addr('align_probe'), [], page, 2000).value, 0n, 'ABI alignment');
    expectError(() => remoteCall(p, tid, t.addr('crash_hook'), [], page, 2000), 'EFAULT', /crashed with SIGSEGV/);
    assert.deepEqual(p.refreshRegs(tid), before);
    const t0 = performance.now();
    expectError(() => remoteCall(p, tid, t.addr('lock_hook'), [], page, 300), 'ETIMEDOUT', /did not return within 300 ms/);
    assert.ok(performance.now() - t0 < 3000);
    assert.deepEqual(p.refreshRegs(tid), before);
    assert.equal(remoteCall(p, tid, t.addr('add_magic'), [1, 1], page, 2000).int, 2235);
    // A signal queued while stopped is dequeued when the thread runs the stub: owed, delivered at detach.
    ptrace.tgkill(t.pid, tid, 10);
    assert.equal(remoteSyscall(p, tid, SYS.getpid).value, BigInt(t.pid));
    ptrace.tgkill(t.pid, tid, 10);
    assert.equal(remoteCall(p, tid, t.addr('add_magic'), [0, 0], page, 2000).int, 1234);
    assert.deepEqual(p.mainThread.owed.map((o) => o.signal), [10, 10], 'each taken by one operation, owed');
    assert.deepEqual(p.refreshRegs(tid), before);
  } finally {
    p.detach();
  }
  const s = stat(await t.ask('stat'));
  assert.equal(s.usr1, 1, 'delivered once (a standard signal does not queue)');
  assert.equal(s.eintr, 0);

  // SIGSTOPped: stub operations work, the process stays stopped.
  process.kill(t.pid, 'SIGSTOP');
  await sleep(30);
  p = StoppedProcess.stop(t.pid);
  try {
    const page = t.page(p);
    assert.equal(remoteSyscall(p, t.pid, SYS.getpid).value, BigInt(t.pid));
    assert.equal(remoteCall(p, t.pid, t.addr('add_magic'), [2, 0], page, 2000).int, 3234);
    const ticks = p.memory.readU64(t.addr('ticks'));
    p.resume();
    p.serviceSignals(30);
    p.restop();
    assert.equal(p.memory.readU64(t.addr('ticks')), ticks, 'resume keeps a SIGSTOPped process stopped');
  } finally {
    p.detach();
  }
  await sleep(30);
  const states = [...threadStates(t.pid).values()];
  assert.ok(states.every((x) => x === 'T'), `still group-stopped after detach (${states})`);
  process.kill(t.pid, 'SIGCONT');
  assert.equal(await t.ask('ping'), 'pong');

  // A hook that makes the main thread exit: ESRCH, the others carry on with stubs.
  p = StoppedProcess.stop(t.pid);
  try {
    const page = t.page(p);
    expectError(() => remoteCall(p, t.pid, t.addr('leave_hook'), [], page, 300), 'ESRCH', new RegExp(`thread ${t.pid} of process ${t.pid} exited during the hook`));
    p.runFor(30);
    assert.notEqual(p.mainThread.tid, t.pid);
    t.page(p);
    assert.equal(remoteSyscall(p, p.mainThread.tid, SYS.getpid).value, BigInt(t.pid));
    assert.equal(remoteCall(p, p.mainThread.tid, t.addr('add_magic'), [0, 1], page, 2000).int, 1235);
  } finally {
    p.detach();
  }
  const ticks0 = readMemoryU64(t.pid, t.addr('ticks'));
  await sleep(30);
  assert.ok(readMemoryU64(t.pid, t.addr('ticks')) > ticks0, 'the other threads still run');
});

function readMemoryU64(pid: number, addr: bigint): bigint {
  const b = readMemory(pid, addr, 8);
  return new DataView(b.buffer, b.byteOffset, 8).getBigUint64(0, true);
}
