/**
 * The low-level process layer against a real multi-threaded C program
 * (test/fixtures/lowlevel/target.c, compiled here with gcc).
 *
 * Every window in which the target is attached is synchronous: Node's libuv
 * reaps its own children with waitpid() on SIGCHLD and would swallow ptrace
 * stops of the target (it is our child) if the event loop ran meanwhile.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { REPO_ROOT } from './helpers/repo.js';
import { HotstackError } from '../src/errors.js';
import {
  StoppedProcess,
  ptrace,
  findFreeGaps,
  findFreeGapsFor,
  groupObjects,
  lockProcess,
  parseMaps,
  processIdentity,
  processStartTime,
  readMaps,
  readMemory,
  remoteCall,
  remoteMmap,
  remoteMprotect,
  remoteMunmap,
  remoteSyscall,
  PROT_READ,
  PROT_WRITE,
  PROT_EXEC,
  MAP_PRIVATE,
  MAP_ANONYMOUS,
  MAP_FIXED_NOREPLACE,
} from '../src/targets/process/index.js';
import { arch } from '../src/arch/index.js';

const SYS = arch.process.sys;

const decodeStatusForTest = ptrace.decodeStatus;
const tgkill = ptrace.tgkill;

// ---------------------------------------------------------------------------
// fixture build

const ROOT = REPO_ROOT;
let workDir = '';
let bin = '';
const syms = new Map<string, bigint>();
const children: ChildProcess[] = [];
const lockDir = () => path.join(workDir, 'state');

before(() => {
  workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'hotstack-lowlevel-'));
  bin = path.join(workDir, 'target');
  execFileSync('gcc', [
    '-O1', '-g', '-pthread', '-fPIE', '-pie', '-Wall', '-o', bin,
    path.join(ROOT, 'test', 'fixtures', 'lowlevel', 'target.c'),
  ]);
  for (const line of execFileSync('nm', [bin], { encoding: 'utf8' }).split('\n')) {
    const m = /^([0-9a-f]+) [TDBtdb] (\w+)$/.exec(line);
    if (m) syms.set(m[2]!, BigInt('0x' + m[1]));
  }
  process.env.HOTSTACK_STATE_DIR = lockDir();
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

// ---------------------------------------------------------------------------
// target process helper

interface Target {
  child: ChildProcess;
  pid: number;
  /** Send one command line, resolve with the next output line. */
  ask(cmd: string): Promise<string>;
  /** Link-time address of a symbol of the target plus its load bias. */
  addr(sym: string): bigint;
  bias: bigint;
}

async function startTarget(mode?: string): Promise<Target> {
  const child = spawn(bin, mode ? [mode] : [], { stdio: ['pipe', 'pipe', 'inherit'] });
  children.push(child);
  const lines: string[] = [];
  const waiters: ((l: string) => void)[] = [];
  let buf = '';
  child.stdout!.setEncoding('utf8');
  child.stdout!.on('data', (d: string) => {
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
  const next = (): Promise<string> =>
    new Promise((resolve, reject) => {
      const l = lines.shift();
      if (l !== undefined) return resolve(l);
      const timer = setTimeout(() => reject(new Error('target did not answer within 5 s')), 5000);
      waiters.push((x) => {
        clearTimeout(timer);
        resolve(x);
      });
    });
  const ready = await next();
  assert.match(ready, /^ready \d+$/);
  const pid = child.pid!;
  assert.equal(ready, `ready ${pid}`);
  const real = fs.realpathSync(bin);
  const first = readMaps(pid).find((m) => m.path === real && m.offset === 0n);
  assert.ok(first, 'target binary is mapped');
  const bias = first.start;
  return {
    child,
    pid,
    bias,
    ask: async (cmd) => {
      child.stdin!.write(cmd + '\n');
      return next();
    },
    addr: (sym) => {
      const a = syms.get(sym);
      assert.ok(a !== undefined, `symbol ${sym}`);
      return bias + a;
    },
  };
}

function stat(line: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const m of line.matchAll(/(\w+)=(-?\d+)/g)) out[m[1]!] = Number(m[2]);
  return out;
}

/** Scheduler state letters of every thread of `pid` (T/t would be a stray stop). */
function threadStates(pid: number): string[] {
  return fs.readdirSync(`/proc/${pid}/task`).map((tid) => {
    const s = fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
    return s.slice(s.lastIndexOf(')') + 2, s.lastIndexOf(')') + 3);
  });
}

function u64(bytes: Uint8Array): bigint {
  return new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true);
}

function le64(v: bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigInt64(0, v, true);
  return b;
}

function expectHotstack(fn: () => unknown, errno: string, msg: RegExp): HotstackError {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof HotstackError, `expected HotstackError, got ${String(e)}`);
    assert.equal(e.errno, errno, e.message);
    assert.match(e.message, msg);
    return e;
  }
  assert.fail(`expected ${errno}`);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Give the target a page of RX memory near its text holding int3 bytes. */
function trapPage(p: StoppedProcess, t: Target): bigint {
  const text = readMaps(t.pid).find((m) => m.path === fs.realpathSync(bin) && m.perms === 'r-xp')!;
  const hints = findFreeGapsFor(t.pid, text, 4096);
  assert.ok(hints.length > 0);
  const page = remoteMmap(p, p.mainThread.tid, hints[0]!, 4096, PROT_READ | PROT_EXEC,
    MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE);
  p.memory.write(page, new Uint8Array(16).fill(0xcc));
  return page;
}

// ---------------------------------------------------------------------------
// pure parts

test('decodeStatus: exit, kill, signal-delivery-stop, interrupt and group stops', () => {
  assert.deepEqual(decodeStatusForTest(3 << 8), { kind: 'exited', code: 3 });
  assert.deepEqual(decodeStatusForTest(9), { kind: 'killed', signal: 9 });
  assert.deepEqual(decodeStatusForTest((10 << 8) | 0x7f), { kind: 'signal', signal: 10 });
  assert.deepEqual(decodeStatusForTest((128 << 16) | (5 << 8) | 0x7f), { kind: 'event-stop', signal: 5, groupStop: false });
  assert.deepEqual(decodeStatusForTest((128 << 16) | (19 << 8) | 0x7f), { kind: 'event-stop', signal: 19, groupStop: true });
});

test('parseMaps and groupObjects: paths with spaces, deleted files, map_files names', () => {
  const text = [
    '00400000-00401000 r--p 00000000 fe:00 42                         /opt/my app/bin',
    '00401000-00402000 r-xp 00001000 fe:00 42                         /opt/my app/bin',
    '00600000-00601000 rw-p 00000000 00:00 0 ',
    '7f0000000000-7f0000001000 r-xp 00000000 fe:01 77                 /usr/lib/libx.so (deleted)',
    '7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0                  [stack]',
    '',
  ].join('\n');
  const maps = parseMaps(text);
  assert.equal(maps.length, 5);
  assert.deepEqual(maps[1], {
    start: 0x401000n, end: 0x402000n, perms: 'r-xp', offset: 0x1000n, dev: 'fe:00', inode: 42n, path: '/opt/my app/bin',
  });
  assert.equal(maps[2]!.path, '');
  const objs = groupObjects(99, maps);
  assert.equal(objs.length, 2);
  assert.equal(objs[0]!.path, '/opt/my app/bin');
  assert.equal(objs[0]!.mappings.length, 2);
  assert.equal(objs[0]!.mapFilesPath, '/proc/99/map_files/400000-401000');
  assert.equal(objs[1]!.path, '/usr/lib/libx.so');
  assert.equal(objs[1]!.deleted, true);
});

test('findFreeGaps: nearest first, inside +-2 GiB, not on mappings or below the stack', () => {
  const maps = parseMaps([
    '555500000000-555500010000 r-xp 00000000 fe:00 1 /bin/x',
    '555500010000-555500020000 rw-p 00000000 00:00 0 ',
    '7ffff0000000-7ffff0100000 rw-p 00000000 00:00 0 [stack]',
  ].join('\n'));
  const near = { start: 0x555500000000n, end: 0x555500020000n };
  const hints = findFreeGaps(maps, near, 0x2000);
  assert.deepEqual(hints, [0x5554ffffe000n, 0x555500020000n]);
  // Only below when the space above is occupied up to the reach.
  const full = parseMaps([
    '555500000000-555500010000 r-xp 00000000 fe:00 1 /bin/x',
    '555500010000-555600000000 rw-p 00000000 00:00 0 ',
  ].join('\n'));
  const h2 = findFreeGaps(full, { start: 0x555500000000n, end: 0x555500010000n }, 0x1000);
  assert.deepEqual(h2, [0x5554fffff000n]);
  // Reach is respected: a gap that starts too far away is not offered.
  const far = parseMaps([
    '100000000000-100000001000 r-xp 00000000 fe:00 1 /bin/y',
    '0000100000-100000000000 rw-p 00000000 00:00 0 ',
    '100000001000-100100000000 rw-p 00000000 00:00 0 ',
  ].join('\n'));
  assert.deepEqual(findFreeGaps(far, { start: 0x100000000000n, end: 0x100000001000n }, 0x1000), []);
  // The stack's growth room (and guard gap) is kept free.
  const nearStack = parseMaps('7ffff0000000-7ffff0100000 rw-p 00000000 00:00 0 [stack]');
  const h3 = findFreeGaps(nearStack, { start: 0x7ffff0000000n, end: 0x7ffff0100000n }, 0x1000);
  // Above the stack top is fine (stacks grow down); below, 8 MiB of growth room + 1 MiB guard gap stay free.
  assert.deepEqual(h3, [0x7ffff0100000n, 0x7ffff0100000n - 9n * 0x100000n - 0x1000n]);
});

// ---------------------------------------------------------------------------
// against a live process

test('one thread held, then the rest (a fleet\'s load): every thread stopped, then all but the held one running again; a single-threaded process has no rest', async () => {
  const t = await startTarget();
  const p = StoppedProcess.stopOne(t.pid, 5000);
  try {
    assert.deepEqual(p.threads.map((x) => x.tid), [t.pid]);
    assert.equal(threadStates(t.pid).filter((s) => s === 't').length, 1, 'only the leader is held');
    p.stopRest(5000);
    assert.equal(p.threads.length, 4);
    assert.ok(threadStates(t.pid).every((s) => s === 't'), 'all threads in tracing stop');
    p.releaseRest();
    assert.deepEqual(p.threads.map((x) => x.tid), [t.pid]);
    p.stopRest(5000);
    assert.equal(p.threads.length, 4, 'and again');
  } finally {
    p.detach();
  }
  assert.equal(await t.ask('get'), 'value 1234');
  // One thread: the kernel counts no other, so stopRest holds just it.
  const one = spawn('sleep', ['30'], { stdio: 'ignore' });
  children.push(one);
  const q = StoppedProcess.stopOne(one.pid!, 5000);
  try {
    q.stopRest(5000);
    assert.deepEqual(q.threads.map((x) => x.tid), [one.pid]);
    assert.deepEqual(threadStates(one.pid!), ['t']);
  } finally {
    q.detach();
  }
  assert.notEqual(threadStates(one.pid!)[0], 't', 'running again');
});

test('stop all threads, read and write memory, detach leaves no stop behind', async () => {
  const t = await startTarget();
  assert.equal(await t.ask('get'), 'value 1234');
  const p = StoppedProcess.stop(t.pid, 5000);
  try {
    const tids = fs.readdirSync(`/proc/${t.pid}/task`).map(Number).sort((a, b) => a - b);
    assert.equal(p.threads.length, 4);
    assert.deepEqual(p.threads.map((x) => x.tid), tids);
    assert.deepEqual(p.threads.map((x) => x.name).sort(), ['locker', 'reader', 'sleeper', 'target']);
    assert.equal(p.mainThread.tid, t.pid);
    const worker = p.threads.find((x) => x.name === 'sleeper')!.tid;
    expectHotstack(() => StoppedProcess.stop(worker), 'EINVAL', new RegExp(`${worker} is a thread of process ${t.pid}`));
    // Locking checks it too (a process target's stops rely on that and skip the check).
    expectHotstack(() => lockProcess(worker, 100), 'EINVAL', new RegExp(`${worker} is a thread of process ${t.pid}`));
    for (const th of p.threads) assert.ok(th.regs && th.regs.rip > 0n && th.regs.rsp > 0n);
    assert.ok(threadStates(t.pid).every((s) => s === 't'), 'all threads in tracing stop');
    // Really stopped: the sleeper's counter does not move.
    const t0 = u64(p.memory.read(t.addr('ticks'), 8));
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 50);
    assert.equal(u64(p.memory.read(t.addr('ticks'), 8)), t0);
    assert.equal(u64(p.memory.read(t.addr('g_value'), 8)), 1234n);
    p.memory.write(t.addr('g_value'), le64(4321n));
    assert.equal(p.memory.readU64(t.addr('g_value')), 4321n);
    // A second tracer (here: ourselves again) is refused with a message naming the causes and the tracer.
    const eperm = expectHotstack(() => StoppedProcess.stop(t.pid), 'EPERM', /another tracer \(gdb, strace, another hotstack\)/);
    assert.match(eperm.message, new RegExp(`not permitted to trace process ${t.pid}.*traced by process ${process.pid}`));
    assert.ok(threadStates(t.pid).every((s) => s === 't'), 'the failed attempt did not disturb the first');
    // Unmapped address: EFAULT naming it.
    expectHotstack(() => p.memory.read(0x10n, 8), 'EFAULT', /0x10\b/);
    expectHotstack(() => p.memory.write(0x10n, Uint8Array.of(1)), 'EFAULT', /cannot write 1 bytes at 0x10 in process/);
    // Beyond 2^53 (no user memory there without 5-level paging): still an exact address in the error.
    expectHotstack(() => p.memory.write(1n << 56n, Uint8Array.of(1)), 'EFAULT', /at 0x100000000000000 /);
    expectHotstack(() => p.memory.read(1n << 56n, 8), 'EFAULT', /at 0x100000000000000 /);
  } finally {
    p.detach();
    p.detach(); // idempotent
  }
  assert.ok(threadStates(t.pid).every((s) => s !== 't' && s !== 'T'), 'no stray stop after detach');
  assert.equal(await t.ask('get'), 'value 4321');
  const s1 = stat(await t.ask('stat'));
  await sleep(50);
  const s2 = stat(await t.ask('stat'));
  assert.ok(s2.ticks! > s1.ticks!, 'sleeper thread runs again after detach');
  assert.equal(s2.eintr, 0);
});

test('remote syscalls on a thread blocked in read(); the read resumes without EINTR', async () => {
  const t = await startTarget();
  await t.ask('ping');
  const p = StoppedProcess.stop(t.pid);
  try {
    const tid = p.mainThread.tid;
    const before = { ...p.mainThread.regs! };
    // Stopped inside read(0): orig_rax = 0 (read), rax = -ERESTARTSYS, to be restarted on resume.
    assert.equal(before.orig_rax, 0n);
    assert.equal(BigInt.asIntN(64, before.rax), -512n);
    assert.equal(remoteSyscall(p, tid, SYS.getpid).value, BigInt(t.pid));
    assert.deepEqual(remoteSyscall(p, tid, SYS.gettid), { value: BigInt(tid), errno: 0 });
    // Another thread works too (it sits in nanosleep).
    const sleeper = p.threads.find((x) => x.name === 'sleeper')!;
    assert.equal(remoteSyscall(p, sleeper.tid, SYS.gettid).value, BigInt(sleeper.tid));
    // Errors come back as errno: close(-1) -> EBADF (9).
    assert.deepEqual(remoteSyscall(p, tid, SYS.close, [-1]), { value: -9n, errno: 9 });
    // Registers are restored exactly.
    assert.deepEqual(p.refreshRegs(tid), before);
    // mmap RX near the program's text, +-2 GiB.
    const text = readMaps(t.pid).find((m) => m.path === fs.realpathSync(bin) && m.perms === 'r-xp')!;
    const hints = findFreeGapsFor(t.pid, text, 8192);
    const hint = hints[0]!;
    const a = remoteMmap(p, tid, hint, 8192, PROT_READ | PROT_WRITE,
      MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE);
    assert.equal(a, hint);
    const dist = a > text.start ? a + 8192n - text.start : text.end - a;
    assert.ok(dist < 1n << 31n, `within 2 GiB (distance ${dist})`);
    remoteMprotect(p, tid, a, 8192, PROT_READ | PROT_EXEC);
    const m = readMaps(t.pid).find((x) => x.start === a)!;
    assert.equal(m.perms, 'r-xp');
    // A tracer may write read-only text.
    p.memory.write(a, Uint8Array.of(0x90, 0xcc));
    assert.deepEqual([...p.memory.read(a, 2)], [0x90, 0xcc]);
    // The same hint again is occupied: EEXIST, so callers move to the next hint.
    expectHotstack(() => remoteMmap(p, tid, a, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE),
      'EEXIST', /mmap/);
    remoteMunmap(p, tid, a, 8192);
    assert.equal(readMaps(t.pid).find((x) => x.start === a), undefined);
  } finally {
    p.detach();
  }
  // The main thread was in read(0): it must get our next line, with no EINTR.
  assert.equal(await t.ask('ping'), 'pong');
  assert.equal(await t.ask('poke'), 'poked');
  await sleep(20);
  const s = stat(await t.ask('stat'));
  assert.equal(s.eintr, 0);
  assert.equal(s.pokes, 1);
  await sleep(20);
  assert.ok(stat(await t.ask('stat')).ticks! > s.ticks!, 'the sleeper, used for a remote syscall, sleeps and ticks again');
});

test('remoteCall: return value, ABI stack alignment, crash and timeout reporting', async () => {
  const t = await startTarget();
  const p = StoppedProcess.stop(t.pid);
  try {
    const tid = p.mainThread.tid;
    const before = { ...p.mainThread.regs! };
    const trap = trapPage(p, t);
    p.memory.write(t.addr('g_value'), le64(5n));
    const r = remoteCall(p, tid, t.addr('add_magic'), [7, 3], trap, 2000);
    assert.deepEqual(r, { value: 7008n, int: 7008 });
    assert.equal(remoteCall(p, tid, t.addr('add_magic'), [-2, 0], trap, 2000).value, -1995n);
    assert.equal(remoteCall(p, tid, t.addr('align_probe'), [], trap, 2000).value, 0n);
    assert.deepEqual(p.refreshRegs(tid), before);

    const crash = expectHotstack(() => remoteCall(p, tid, t.addr('crash_hook'), [], trap, 2000),
      'EFAULT', /crashed with SIGSEGV/);
    assert.match(crash.message, new RegExp(`0x${t.addr('crash_hook').toString(16)}`));
    assert.deepEqual(p.refreshRegs(tid), before);

    const t0 = performance.now();
    expectHotstack(() => remoteCall(p, tid, t.addr('lock_hook'), [], trap, 300), 'ETIMEDOUT', /did not return within 300 ms/);
    const took = performance.now() - t0;
    assert.ok(took >= 290 && took < 3000, `timeout took ${took} ms`);
    assert.deepEqual(p.refreshRegs(tid), before);
    // Still usable afterwards.
    assert.equal(remoteCall(p, tid, t.addr('add_magic'), [1, 1], trap, 2000).int, 1006);
  } finally {
    p.detach();
  }
  assert.equal(await t.ask('ping'), 'pong');
  assert.equal(await t.ask('get'), 'value 5');
  const s = stat(await t.ask('stat'));
  assert.equal(s.eintr, 0);
  assert.equal(s.usr1, 0);
});

test('signals: sent while stopped, or taken during a remote op, are delivered once, with their siginfo', async () => {
  const t = await startTarget();
  const syncSleep = (ms: number) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
  // 1. Sent (by kill: SI_USER from us) while stopped; the main thread takes it while resumed and attached;
  //    restop finds it in a signal-delivery-stop and owes it; detach re-injects it with its siginfo.
  let p = StoppedProcess.stop(t.pid);
  try {
    process.kill(t.pid, 'SIGUSR1');
    p.resume();
    // Until the main thread sits in the signal's delivery stop (on a loaded machine it may not run for a while;
    // an interrupt reaching it first would leave the signal pending instead of owed).
    const traced = (): boolean => {
      const st = fs.readFileSync(`/proc/${t.pid}/task/${t.pid}/stat`, 'utf8');
      return st.charAt(st.lastIndexOf(')') + 2) === 't';
    };
    for (let i = 0; i < 2000 && !traced(); i++) syncSleep(1);
    p.restop();
    assert.equal(p.threads.length, 4);
    assert.deepEqual(p.mainThread.owed.map((o) => o.signal), [10]);
  } finally {
    p.detach();
  }
  let s = stat(await t.ask('stat'));
  assert.equal(s.usr1, 1);
  assert.equal(s.code, 0, 'SI_USER, as sent, not SI_TKILL from the re-injection');
  assert.equal(s.sender, process.pid);
  // 2. Queued for the main thread, dequeued when it runs our syscall: owed, delivered at detach.
  p = StoppedProcess.stop(t.pid);
  try {
    tgkill(t.pid, t.pid, 10);
    assert.equal(remoteSyscall(p, t.pid, SYS.getpid).value, BigInt(t.pid));
    assert.deepEqual(p.mainThread.owed.map((o) => o.signal), [10]);
  } finally {
    p.detach();
  }
  s = stat(await t.ask('stat'));
  assert.equal(s.usr1, 2);
  assert.equal(s.code, -6, 'SI_TKILL');
  // 3. Owed, then delivered by resume() (not detach), then the process runs attached (runFor services signals).
  p = StoppedProcess.stop(t.pid);
  try {
    tgkill(t.pid, t.pid, 10);
    remoteSyscall(p, t.pid, SYS.getpid);
    assert.equal(p.mainThread.owed.length, 1);
    process.kill(t.pid, 'SIGUSR1');
    p.runFor(50);
    assert.equal(p.threads.length, 4);
    assert.equal(p.mainThread.owed.length, 0);
    assert.equal(p.memory.read(t.addr('usr1_count'), 1)[0], 4);
  } finally {
    p.detach();
  }
  s = stat(await t.ask('stat'));
  assert.equal(s.usr1, 4);
  assert.equal(s.eintr, 0);
  assert.ok(threadStates(t.pid).every((x) => x !== 't' && x !== 'T'));
});

test('threads that come and go while stopping: every thread present at the end is stopped', async () => {
  const t = await startTarget('churn');
  for (let i = 0; i < 20; i++) {
    const p = StoppedProcess.stop(t.pid);
    try {
      const ours = p.threads.map((x) => x.tid);
      const present = fs.readdirSync(`/proc/${t.pid}/task`).map(Number).sort((a, b) => a - b);
      assert.deepEqual(ours, present);
      assert.ok(threadStates(t.pid).every((x) => x === 't'));
      assert.ok(ours.length >= 5);
    } finally {
      p.detach();
    }
  }
  assert.equal(await t.ask('ping'), 'pong');
  assert.equal(stat(await t.ask('stat')).eintr, 0);
});

test('a zombie thread-group leader is skipped; another thread runs remote operations', async () => {
  const t = await startTarget('leader-exit');
  await sleep(50);
  const p = StoppedProcess.stop(t.pid);
  try {
    assert.equal(p.threads.length, 3);
    assert.notEqual(p.mainThread.tid, t.pid);
    assert.equal(remoteSyscall(p, p.mainThread.tid, SYS.getpid).value, BigInt(t.pid));
    const t0 = p.memory.readU64(t.addr('ticks'));
    p.runFor(30);
    assert.ok(p.memory.readU64(t.addr('ticks')) > t0);
  } finally {
    p.detach();
  }
  // The leader's own maps are empty; readMaps falls back to a live thread's.
  assert.equal(fs.readFileSync(`/proc/${t.pid}/maps`, 'utf8'), '');
  assert.ok(readMaps(t.pid).length > 10);
  const t1 = fs.readFileSync(`/proc/${t.pid}/status`, 'utf8');
  assert.match(t1, /State:\s+Z/);
  const threads = threadStates(t.pid);
  assert.deepEqual(threads.filter((x) => x !== 'Z').every((x) => x === 'S' || x === 'R'), true);
});

test('a hook that makes the main thread exit: ESRCH for that thread, the rest carries on', async () => {
  const t = await startTarget();
  const p = StoppedProcess.stop(t.pid);
  try {
    const trap = trapPage(p, t);
    const t0 = performance.now();
    expectHotstack(() => remoteCall(p, t.pid, t.addr('leave_hook'), [], trap, 300), 'ESRCH',
      new RegExp(`thread ${t.pid} of process ${t.pid} exited during the hook`));
    assert.ok(performance.now() - t0 < 2000);
    p.runFor(30);
    assert.equal(p.threads.length, 3);
    assert.notEqual(p.mainThread.tid, t.pid);
    assert.equal(remoteSyscall(p, p.mainThread.tid, SYS.getpid).value, BigInt(t.pid));
  } finally {
    p.detach();
  }
  const a = readMemory(t.pid, t.addr('ticks'), 8);
  await sleep(30);
  assert.ok(u64(readMemory(t.pid, t.addr('ticks'), 8)) > u64(a), 'the other threads still run');
});

test('a SIGSTOPped process stays stopped: attach, work, detach, then SIGCONT resumes it', async () => {
  const t = await startTarget();
  process.kill(t.pid, 'SIGSTOP');
  await sleep(30);
  assert.ok(threadStates(t.pid).every((x) => x === 'T'));
  const p = StoppedProcess.stop(t.pid);
  try {
    assert.equal(p.threads.length, 4);
    assert.ok(p.threads.every((x) => x.groupStop));
    assert.equal(remoteSyscall(p, t.pid, SYS.getpid).value, BigInt(t.pid));
    const t0 = p.memory.readU64(t.addr('ticks'));
    p.resume();
    // Every thread, including the one that just ran a remote syscall, stays in its stop.
    assert.deepEqual(threadStates(t.pid), ['t', 't', 't', 't']);
    p.serviceSignals(30);
    p.restop();
    assert.equal(p.threads.length, 4);
    assert.equal(p.memory.readU64(t.addr('ticks')), t0, 'resume keeps a SIGSTOPped process stopped');
  } finally {
    p.detach();
  }
  await sleep(30);
  assert.ok(threadStates(t.pid).every((x) => x === 'T'), 'still group-stopped after detach');
  process.kill(t.pid, 'SIGCONT');
  assert.equal(await t.ask('ping'), 'pong');
  assert.equal(stat(await t.ask('stat')).eintr, 0);
});

test('ESRCH for a process that exited, and for one killed while stopped', async () => {
  const t = await startTarget();
  const exited = new Promise((r) => t.child.once('exit', r));
  t.child.stdin!.write('exit\n');
  await exited;
  expectHotstack(() => StoppedProcess.stop(t.pid), 'ESRCH', new RegExp(`process ${t.pid}`));
  expectHotstack(() => processIdentity(t.pid), 'ESRCH', /does not exist/);

  const k = await startTarget();
  const p = StoppedProcess.stop(k.pid);
  try {
    process.kill(k.pid, 'SIGKILL');
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 50);
    expectHotstack(() => remoteSyscall(p, k.pid, SYS.getpid), 'ESRCH', new RegExp(`process ${k.pid} exited`));
    expectHotstack(() => p.restop(), 'ESRCH', new RegExp(`process ${k.pid} exited`));
  } finally {
    p.detach();
  }
  expectHotstack(() => StoppedProcess.stop(-5), 'EINVAL', /invalid/);
  expectHotstack(() => StoppedProcess.stop(999999999), 'ESRCH', /process 999999999 does not exist/);
});

test('per-process lock: exclusive, EBUSY on timeout, released when the holder dies', async () => {
  const t = await startTarget();
  const start = processStartTime(t.pid);
  assert.equal(processIdentity(t.pid).key, `${t.pid}-${start}`);
  assert.equal(processIdentity(t.pid).comm, 'target');
  const l1 = lockProcess(t.pid, 100);
  // Named by the PID namespace and the pid there, as every namespace sees them (here: ours).
  const pidns = fs.statSync(`/proc/${t.pid}/ns/pid`).ino;
  assert.equal(l1.path, path.join(lockDir(), `pidns${pidns}-pid${t.pid}.lock`));
  assert.equal(fs.statSync(lockDir()).mode & 0o777, 0o700);
  const t0 = performance.now();
  expectHotstack(() => lockProcess(t.pid, 100), 'EBUSY', new RegExp(`another hotstack is acting on process ${t.pid}`));
  assert.ok(performance.now() - t0 >= 95);
  l1.release();
  l1.release();
  const l2 = lockProcess(t.pid, 100);
  l2.release();

  // A holder killed with SIGKILL releases the lock with its file descriptor.
  const lockModule = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'src', 'targets', 'process', 'lock.js');
  const holder = spawn(process.execPath, ['--input-type=module', '-e',
    `import { lockProcess } from ${JSON.stringify(lockModule)}; lockProcess(${t.pid}, 1000); console.log('held'); setInterval(() => {}, 1000);`],
  { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env } });
  children.push(holder);
  await new Promise<void>((resolve, reject) => {
    holder.stdout!.once('data', (d) => (String(d).includes('held') ? resolve() : reject(new Error(String(d)))));
    holder.once('exit', (c) => reject(new Error(`holder exited ${c}`)));
  });
  expectHotstack(() => lockProcess(t.pid, 50), 'EBUSY', /another hotstack/);
  const dead = new Promise((r) => holder.once('exit', r));
  holder.kill('SIGKILL');
  await dead;
  const l3 = lockProcess(t.pid, 1000);
  assert.ok(l3.held);
  l3.release();
});
