/**
 * The state directory and state files are not trusted (issue 11, audit
 * items 2.1, 2.2, 2.8): planted symbolic links, FIFOs and directories,
 * a directory others can write, a held lock, a state file whose addresses
 * were changed to point at the program's own code or libc, and a target
 * that is a zombie. Each case runs the real CLI on a real process and
 * checks both the error and that nothing was written, created or unmapped.
 * Files the target maps (2.6) are read as root too: a huge one is not read
 * whole, a device is never opened.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import {
  chmodSync, chownSync, closeSync, copyFileSync, existsSync, openSync, readdirSync, readSync, writeSync, lstatSync, mkdirSync, readFileSync, realpathSync, rmSync, statSync, symlinkSync, truncateSync, writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { buildAll, functionBytes, type BaseProcess } from './helpers/toolchain.js';
import { Cli, HOTSTACK_BIN, Processes, expectCli, freshStateDir, readMemory, runtimeAddress, type CliResult } from './helpers/live.js';
import { lockProcess, processStartTime } from '../src/targets/process/index.js';
import { buildExtraPayload } from './helpers/extra.js';
import { cachedFileBytes, fileCache, loadObjects, unreadBase, unreadForTotal } from '../src/targets/process/objects.js';
import { isHotstackError } from '../src/errors.js';
import { buildStress } from './helpers/stress.js';
import type { ListEntryJson } from '../src/cli/json-types.js';

let files: Record<string, string> = {};
const procs = new Processes();
const dirs: string[] = [];

function newDir(tag: string): string {
  const d = freshStateDir(`trust-${tag}`);
  dirs.push(d);
  return d;
}

before(() => {
  files = buildAll();
});

after(async () => {
  await procs.stopAll();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

const stateName = (pid: number): string => `${pid}-${processStartTime(pid)}`;

function expectError(r: CliResult, errno: string, message: RegExp, step: string): void {
  expectCli(r, { status: errno === 'EBUSY' ? 2 : 1, stderr: message }, step);
  assert.match(r.stderr, new RegExp(`Error \\d+: ${errno}: `), `${step}: errno\n${r.stderr}`);
  assert.doesNotMatch(r.stderr, /internal error|\n\s+at /, `${step}: no internal error or stack trace\n${r.stderr}`);
}

async function alive(b: BaseProcess, step: string): Promise<void> {
  assert.equal(await b.ask('m'), '42', `${step}: the process still answers`);
}

describe('state directory and files: planted things are refused, never followed (2.2)', () => {
  test('a symbolic link as the state directory', async () => {
    const b = await procs.start(files['base']!);
    const real = newDir('real');
    const link = join(newDir('holder'), 'state');
    symlinkSync(real, link);
    expectError(new Cli(link).run(b.pid, 'list'), 'EPERM', /state directory .*\/state is a symbolic link/, 'symlinked dir');
    assert.deepEqual(spawnSync('ls', ['-A', real], { encoding: 'utf8' }).stdout, '', 'nothing was created through the link');
  });

  test('a state directory others may write, or another user owns', async () => {
    const b = await procs.start(files['base']!);
    const open = newDir('open');
    chmodSync(open, 0o777);
    expectError(new Cli(open).run(b.pid, 'list'), 'EPERM', /state directory .* is writable by group or others \(mode 0777\)/, 'mode 0777');
    const theirs = newDir('theirs');
    chownSync(theirs, 65534, 65534);
    expectError(new Cli(theirs).run(b.pid, 'list'), 'EPERM', /state directory .* is owned by uid 65534/, 'owned by nobody');
  });

  test('a missing state directory is created 0700, state files 0600', async () => {
    const b = await procs.start(files['base']!);
    const dir = join(newDir('parent'), 'run', 'hotstack');
    const cli = new Cli(dir);
    expectCli(cli.run(b.pid, 'load', files['hello']!), { status: 0 }, 'load');
    assert.equal(lstatSync(dir).mode & 0o777, 0o700, 'directory mode');
    const st = lstatSync(join(dir, `${stateName(b.pid)}.json`));
    assert.ok(st.isFile());
    assert.equal(st.mode & 0o777, 0o600, 'state file mode');
  });

  test('a symbolic link as the lock file creates nothing', async () => {
    const b = await procs.start(files['base']!);
    const dir = newDir('locklink');
    const victim = join(newDir('victim'), 'created-by-hotstack');
    symlinkSync(victim, join(dir, `pidns${statSync(`/proc/${b.pid}/ns/pid`).ino}-pid${b.pid}.lock`));
    expectError(new Cli(dir).run(b.pid, 'list'), 'EPERM', /lock file .*\.lock is a symbolic link/, 'lock symlink');
    assert.equal(existsSync(victim), false, 'the link target was not created');
  });

  test('a symbolic link as the temporary state file is replaced, not written through', async () => {
    const b = await procs.start(files['base']!);
    const dir = newDir('tmplink');
    const victim = join(newDir('victim2'), 'precious');
    writeFileSync(victim, 'precious data\n');
    symlinkSync(victim, join(dir, `${stateName(b.pid)}.json.tmp`));
    const cli = new Cli(dir);
    expectCli(cli.run(b.pid, 'load', files['hello']!), { status: 0, stderr: '' }, 'load');
    assert.equal(readFileSync(victim, 'utf8'), 'precious data\n', 'the link target is untouched');
    assert.deepEqual(cli.states(b.pid), ['hello:APPLIED']);
    expectCli(cli.run(b.pid, 'revert', 'hello'), { status: 0 }, 'revert');
  });

  test('a FIFO, a directory or a symbolic link as the state file: a clear error at once', async () => {
    const b = await procs.start(files['base']!);
    const name = `${stateName(b.pid)}.json`;
    const fifoDir = newDir('fifo');
    assert.equal(spawnSync('mkfifo', [join(fifoDir, name)]).status, 0);
    const t0 = performance.now();
    expectError(new Cli(fifoDir).run(b.pid, 'list'), 'EPERM', /state file .*\.json is a FIFO, not a regular file/, 'FIFO');
    assert.ok(performance.now() - t0 < 10_000, 'list did not hang on the FIFO');
    const dirDir = newDir('dir');
    mkdirSync(join(dirDir, name));
    expectError(new Cli(dirDir).run(b.pid, 'list'), 'EPERM', /state file .*\.json is a directory, not a regular file/, 'directory');
    expectError(new Cli(dirDir).run(b.pid, 'load', files['hello']!), 'EPERM', /state file .*\.json is a directory/, 'directory, load');
    const linkDir = newDir('statelink');
    const victim = join(newDir('victim3'), 'state');
    writeFileSync(victim, '{}');
    symlinkSync(victim, join(linkDir, name));
    expectError(new Cli(linkDir).run(b.pid, 'list'), 'EPERM', /state file .*\.json is a symbolic link/, 'symlink');
    await alive(b, 'after the planted files');
  });

  test('a held lock: EBUSY after the bounded wait, naming the holder', async () => {
    const b = await procs.start(files['base']!);
    const dir = newDir('held');
    const saved = process.env.HOTSTACK_STATE_DIR;
    process.env.HOTSTACK_STATE_DIR = dir;
    const lock = lockProcess(b.pid, 100);
    try {
      const t0 = performance.now();
      const r = new Cli(dir).run(b.pid, 'list');
      expectError(r, 'EBUSY', new RegExp(`another hotstack is acting on process ${b.pid} by pid ${process.pid} \\(node\\)`), 'held lock');
      assert.ok(performance.now() - t0 < 30_000);
    } finally {
      lock.release();
      process.env.HOTSTACK_STATE_DIR = saved;
    }
  });
});

// ---------------------------------------------------------------------------
// Editing a state file as an attacker who can write the state directory would

const BIG = '\u0000big:';
type Json = Record<string, unknown> & { [k: string]: any }; // eslint-disable-line @typescript-eslint/no-explicit-any
const big = (v: bigint): string => BIG + v.toString(16);

/** The CLI told to use a state file the process holds no copy of. */
class TrustingCli extends Cli {
  override run(pid: number, ...args: string[]): CliResult {
    return this.raw(['--pid', String(pid), ...args], { env: { HOTSTACK_TRUST_STATE_FILE: '1' } });
  }
}

const MIRROR_MAGIC = Buffer.from('hotstack-state\u0000\u0001', 'latin1');

/**
 * Destroy the copy of the state hotstack keeps in the process (the magic at
 * the start of a private anonymous r--p mapping), as if the payloads had
 * been loaded by a hotstack that kept none: the file is then all there is.
 */
function wipeMirror(pid: number): number {
  let wiped = 0;
  const fd = openSync(`/proc/${pid}/mem`, 'r+');
  try {
    for (const line of readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n')) {
      const m = /^([0-9a-f]+)-([0-9a-f]+) r--p [0-9a-f]+ \S+ 0\s*$/.exec(line);
      if (!m) continue;
      for (let a = BigInt('0x' + m[1]); a < BigInt('0x' + m[2]); a += 4096n) {
        const head = Buffer.alloc(16);
        readSync(fd, head, 0, 16, Number(a));
        if (head.equals(MIRROR_MAGIC)) {
          writeSync(fd, Buffer.alloc(16), 0, 16, Number(a));
          wiped++;
        }
      }
    }
  } finally {
    closeSync(fd);
  }
  return wiped;
}

/** Edit the state file; unless `keepMirror`, the copy in the process is destroyed first, so the file is what is read. */
function editState(dir: string, pid: number, edit: (engine: Json, file: Json) => void, keepMirror = false): void {
  if (!keepMirror) assert.equal(wipeMirror(pid), 1, 'one copy of the state in the process');
  const path = join(dir, `${stateName(pid)}.json`);
  const file = JSON.parse(readFileSync(path, 'utf8')) as Json;
  const engine = JSON.parse(file.engine as string) as Json;
  edit(engine, file);
  file.engine = JSON.stringify(engine);
  writeFileSync(path, JSON.stringify(file));
}

/** The first r-x mapping of libc in `pid`. */
function libcCode(pid: number): bigint {
  for (const line of readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n')) {
    const m = /^([0-9a-f]+)-[0-9a-f]+ r-xp .*\/libc[.-]/.exec(line);
    if (m) return BigInt('0x' + m[1]);
  }
  throw new Error(`no libc code mapping in process ${pid}`);
}

describe('addresses from the state file are checked against the process (2.1)', () => {
  // Each case edits the file of a process holding no copy of its state (as
  // a hotstack before the copy would leave it), and tells hotstack to use
  // the file (HOTSTACK_TRUST_STATE_FILE=1): the file is checked.
  async function loaded(tag: string): Promise<{ b: BaseProcess; cli: Cli; dir: string; site: bigint; jump: Buffer }> {
    const b = await procs.start(files['base']!);
    const dir = newDir(tag);
    const cli = new TrustingCli(dir);
    expectCli(cli.run(b.pid, 'load', files['hello']!), { status: 0, stderr: '' }, `${tag}: load`);
    assert.equal(await b.ask('v'), 'Hello World');
    const site = runtimeAddress(b.pid, files['base']!, 'extra_version');
    return { b, cli, dir, site, jump: readMemory(b.pid, site, 9) };
  }

  test('chosen undo bytes: revert refuses and writes nothing', async () => {
    const { b, cli, dir, site, jump } = await loaded('undo');
    editState(dir, b.pid, (e) => {
      for (const f of e.payloads[0].funcs) if (f.applied) f.undo = 'cc'.repeat(f.undo.length / 2);
    });
    expectError(cli.run(b.pid, 'revert', 'hello'), 'EPERM', /state file .* does not match process \d+: the saved bytes of extra_version in payload hello/, 'revert');
    expectError(cli.run(b.pid, 'list'), 'EPERM', /does not match process/, 'list');
    assert.deepEqual(readMemory(b.pid, site, 9), jump, 'the patched code is unchanged');
    assert.equal(await b.ask('v'), 'Hello World');
  });

  test('a region at the program\'s own text: unload refuses, nothing is unmapped', async () => {
    const { b, cli, dir } = await loaded('region');
    expectCli(cli.run(b.pid, 'revert', 'hello'), { status: 0 }, 'revert');
    const text = runtimeAddress(b.pid, files['base']!, 'main') & ~0xfffn;
    editState(dir, b.pid, (e) => {
      e.payloads[0].regions[0].addr = big(text);
    });
    expectError(cli.run(b.pid, 'unload', 'hello'), 'EPERM', /region 0x[0-9a-f]+ of payload hello .* is not memory hotstack mapped/, 'unload');
    await alive(b, 'after the refused unload');
  });

  test('a hook at libc code: apply refuses, the process lives', async () => {
    const { b, cli, dir } = await loaded('hook');
    expectCli(cli.run(b.pid, 'revert', 'hello'), { status: 0 }, 'revert');
    const exitFn = libcCode(b.pid) + 0x100n;
    editState(dir, b.pid, (e) => {
      e.payloads[0].hooks.load = [big(exitFn)];
    });
    expectError(cli.run(b.pid, 'apply', 'hello'), 'EPERM', /the load hook of payload hello at 0x[0-9a-f]+ is not in its code/, 'apply');
    await alive(b, 'after the refused apply');
  });

  test('a journal that would write chosen bytes: refused before repair', async () => {
    const { b, cli, dir } = await loaded('journal');
    const main = runtimeAddress(b.pid, files['base']!, 'main');
    const now = readMemory(b.pid, main, 5);
    editState(dir, b.pid, (e) => {
      e.pending = { action: 'apply', payload: 'hello', writes: [{ addr: big(main), before: 'cccccccccc', after: now.toString('hex') }], regions: [] };
    });
    expectError(cli.run(b.pid, 'list'), 'EPERM', /the interrupted apply wrote at 0x[0-9a-f]+, which is no patch site/, 'list');
    assert.deepEqual(readMemory(b.pid, main, 5), now, 'main is unchanged');
    await alive(b, 'after the refused repair');
  });

  test('a runtime page at libc code: never written, a page of ours is made instead', async () => {
    const { b, cli, dir } = await loaded('runtime');
    // An int3 byte in libc's code: it looks like the start of a runtime page.
    const code = libcCode(b.pid);
    const at = readMemory(b.pid, code, 65536).indexOf(0xcc);
    assert.ok(at >= 0, 'an 0xcc byte in libc code');
    const libc = code + BigInt(at);
    const before = readMemory(b.pid, libc, 4096);
    editState(dir, b.pid, (_e, f) => {
      f.runtime = { trap: libc.toString() };
    });
    expectCli(cli.run(b.pid, 'revert', 'hello'), { status: 0, stderr: '' }, 'revert (runs hooks)');
    assert.deepEqual(readMemory(b.pid, libc, 4096), before, 'libc code is unchanged');
    const trap = JSON.parse(readFileSync(join(dir, `${stateName(b.pid)}.json`), 'utf8')).runtime.trap as string;
    assert.notEqual(BigInt(trap), libc, 'a new runtime page was recorded');
    assert.equal(await b.ask('h'), '112', 'the unload hook ran');
  });

  test('a state file with payloads and no copy in the process is refused unless trusted explicitly', async () => {
    const { b, dir, site, jump } = await loaded('untrusted');
    editState(dir, b.pid, () => undefined);
    const plain = new Cli(dir);
    for (const args of [['list'], ['revert', 'hello']]) {
      expectError(plain.run(b.pid, ...args), 'EPERM', new RegExp(`state file .*\\.json lists payloads, but process ${b.pid} holds no copy of hotstack's state.*HOTSTACK_TRUST_STATE_FILE=1`), args[0]!);
    }
    assert.deepEqual(readMemory(b.pid, site, 9), jump, 'nothing was reverted');
    // Trusted once, the state is checked and copied into the process; then it needs no trust.
    expectCli(new TrustingCli(dir).run(b.pid, 'revert', 'hello'), { status: 0, stdout: 'Reverting hello... completed\n' }, 'trusted revert');
    expectCli(plain.run(b.pid, 'unload', 'hello'), { status: 0, stdout: 'Unloading hello... completed\n' }, 'unload');
  });

  test('an edited state file is ignored while the process holds its own copy', async () => {
    const { b, cli, dir, site } = await loaded('mirror');
    const original = functionBytes(files['base']!, 'extra_version', 9);
    editState(dir, b.pid, (e) => {
      for (const f of e.payloads[0].funcs) if (f.applied) f.undo = 'cc'.repeat(f.undo.length / 2);
      e.payloads[0].hooks.unload = [];
    }, true);
    expectCli(cli.run(b.pid, 'revert', 'hello'), { status: 0, stderr: '' }, 'revert');
    assert.deepEqual(readMemory(b.pid, site, 9), original, 'the original code is back, not the edited bytes');
    assert.equal(await b.ask('h'), '112', 'the unload hook ran (the edit removed it)');
    assert.equal(await b.ask('v'), '-unstable');
  });

  test('the state as hotstack wrote it still works (no false alarm)', async () => {
    const { b, cli } = await loaded('plain');
    expectCli(cli.run(b.pid, 'load', files['bye']!), { status: 0, stderr: '' }, 'load bye');
    expectCli(cli.run(b.pid, 'revert', 'bye'), { status: 0, stderr: '' }, 'revert bye');
    expectCli(cli.run(b.pid, 'revert', 'hello'), { status: 0, stderr: '' }, 'revert hello');
    expectCli(cli.run(b.pid, 'unload', 'bye'), { status: 0, stderr: '' }, 'unload bye');
    expectCli(cli.run(b.pid, 'unload', 'hello'), { status: 0, stderr: '' }, 'unload hello');
  });
});

describe('a dead target is ESRCH at once (2.8)', () => {
  test('a zombie', async () => {
    // sh starts a short child, then becomes a sleep that never reaps it.
    const parent = spawn('sh', ['-c', 'sleep 0.1 & exec sleep 30'], { stdio: 'ignore' });
    try {
      let zombie = 0;
      for (let i = 0; i < 100 && !zombie; i++) {
        await new Promise((r) => setTimeout(r, 50));
        const kids = readFileSync(`/proc/${parent.pid}/task/${parent.pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
        for (const k of kids) {
          const stat = readFileSync(`/proc/${k}/stat`, 'utf8');
          if (stat.charAt(stat.lastIndexOf(')') + 2) === 'Z') zombie = k;
        }
      }
      assert.ok(zombie > 0, 'a zombie child appeared');
      const cli = new Cli(newDir('zombie'));
      for (const args of [['list'], ['load', files['hello']!]]) {
        const t0 = performance.now();
        expectError(cli.run(zombie, ...args), 'ESRCH', new RegExp(`process ${zombie} has exited \\(a zombie`), args[0]!);
        assert.ok(performance.now() - t0 < 5000, `${args[0]}: at once`);
      }
    } finally {
      parent.kill('SIGKILL');
    }
  });
});

/**
 * Start `hotstack load` of a payload whose load hook never returns, wait
 * until the hook sleeps inside `pid`, SIGKILL `pid`: hotstack must say
 * ESRCH long before the hook timeout (set far above the bound asserted, so
 * an ETIMEDOUT cannot pass for prompt). The target has other threads: the
 * leader's death is then reported to its tracer only after theirs have
 * been collected, so waiting on the leader alone would never see it.
 */
async function killedDuringHook(pid: number, base: string, tag: string): Promise<void> {
  const stuck = buildExtraPayload({ name: 'stuck_hook', sources: ['stuck_hook.c'], base });
  const tool = spawn(process.execPath, [HOTSTACK_BIN, '--pid', String(pid), 'load', stuck], {
    stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, HOTSTACK_STATE_DIR: newDir(tag), HOTSTACK_HOOK_TIMEOUT_MS: String(HOOK_TIMEOUT_MS) },
  });
  let stderr = '';
  tool.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d; });
  const exited = new Promise<number | null>((done) => tool.on('exit', done));
  try {
    // 35: nanosleep, where the hook sleeps (the base waits in read, 0).
    for (let i = 0; !readFileSync(`/proc/${pid}/task/${pid}/syscall`, 'utf8').startsWith('35 '); i++) {
      assert.ok(i < 400, `the load hook started running in ${pid}\n${stderr}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    const t0 = performance.now();
    process.kill(pid, 'SIGKILL');
    const status = await exited;
    const took = performance.now() - t0;
    assert.equal(status, 1, stderr);
    assert.match(stderr, new RegExp(`Error 3: ESRCH: process ${pid} exited`), 'ESRCH naming the process');
    assert.doesNotMatch(stderr, /ETIMEDOUT|EFAULT|short read|internal error/);
    assert.ok(took < HOOK_TIMEOUT_MS / 2, `ESRCH well before the hook timeout (${Math.round(took)} ms)`);
  } finally {
    tool.kill('SIGKILL');
  }
}

const HOOK_TIMEOUT_MS = 20_000;

describe('a target that dies during an action is ESRCH at once (2.8)', () => {
  let stress = '';
  before(() => {
    stress = buildStress(newDir('stress-fixtures')).base;
  });

  test('killed while its load hook runs (reaped by its parent)', async () => {
    const b = await procs.start(stress);
    assert.equal(await b.ask('U 2'), 'ok 2', 'two more threads');
    await killedDuringHook(b.pid, stress, 'killed-hook');
  });

  test('killed while its load hook runs, then left a zombie (its parent never reaps it)', async () => {
    const wrapper = join(newDir('unreaped'), 'parent');
    // The shell starts the base on our pipes (fd 3: a background job's stdin
    // is /dev/null) and becomes a sleep that never waits for it.
    writeFileSync(wrapper, `#!/bin/sh\nexec 3<&0\n${stress} <&3 3<&- &\nexec sleep 600 3<&-\n`);
    chmodSync(wrapper, 0o755);
    const parent = await procs.start(wrapper);
    const pid = Number(readFileSync(`/proc/${parent.pid}/task/${parent.pid}/children`, 'utf8').trim().split(/\s+/)[0]);
    assert.equal(await parent.ask('U 2'), 'ok 2', 'two more threads');
    await killedDuringHook(pid, stress, 'killed-hook-zombie');
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    assert.equal(stat.charAt(stat.lastIndexOf(')') + 2), 'Z', 'it is a zombie now');
    expectError(new Cli(newDir('after-zombie')).run(pid, 'list'), 'ESRCH', new RegExp(`process ${pid} has exited \\(a zombie`), 'list after');
  });
});

describe('files the target maps are read within bounds (2.6)', () => {
  test('mapped files are read up to a total per action: past it a base is EFBIG, and a symbol lookup names what was not read', async () => {
    const b = await procs.start(files['base']!);
    const all = loadObjects(b.pid);
    assert.ok(all.objects.length >= 3 && all.oversized.length === 0, 'the program, libc and ld.so are read under the default total');
    assert.equal(unreadForTotal(all), '');
    // A total that holds the program (first in map order) and nothing more.
    const capped = loadObjects(b.pid, statSync(files['base']!).size);
    assert.deepEqual(capped.objects.map((o) => o.path), [realpathSync(files['base']!)]);
    const libc = capped.oversized.find((o) => /\/libc\.so/.test(o.path));
    assert.ok(libc && libc.over === 'total', 'libc is past the total, not read');
    assert.ok(libc.buildId, 'its build-id is known all the same, from its headers');
    assert.throws(() => unreadBase(libc, b.pid), (e: unknown) => isHotstackError(e) && e.errno === 'EFBIG' &&
      /^the payload's base .*libc\.so.* was not read: .* more than hotstack reads in one action \(2147483648 bytes\)/.test(e.message));
    assert.match(unreadForTotal(capped), /mapped file\(s\) were not read, past the 2147483648 bytes hotstack reads in one action: .*libc\.so/);
  });

  test('the parsed files kept across actions stay within their byte bound, and evicted ones are read again', async () => {
    const b = await procs.start(files['base']!);
    const libcSize = statSync(loadObjects(b.pid).objects.find((o) => /\/libc\.so/.test(o.path))!.path).size;
    const saved = fileCache.maxBytes;
    try {
      // Room for libc alone: each load evicts what the previous one kept, and still reads every object.
      fileCache.maxBytes = libcSize;
      for (let i = 0; i < 3; i++) {
        const loaded = loadObjects(b.pid);
        assert.ok(loaded.objects.some((o) => /\/libc\.so/.test(o.path)) && loaded.objects.length >= 3, `round ${i}: every object read`);
        assert.ok(cachedFileBytes() <= fileCache.maxBytes, `round ${i}: ${cachedFileBytes()} bytes kept, bound ${fileCache.maxBytes}`);
      }
    } finally {
      fileCache.maxBytes = saved;
    }
  });

  test('a huge mapped ELF file is not read whole: EFBIG naming it, at once', async () => {
    const dir = newDir('big');
    const big = join(dir, 'bigbase');
    copyFileSync(files['base']!, big);
    chmodSync(big, 0o755);
    truncateSync(big, 600 * 1024 * 1024); // trailing zeros: the program still runs, its build-id unchanged
    const b = await procs.start(big);
    const t0 = performance.now();
    const r = spawnSync('/usr/bin/time', ['-f', 'maxrss=%M', process.execPath, HOTSTACK_BIN, '--pid', String(b.pid), 'load', files['hello']!], {
      encoding: 'utf8', env: { ...process.env, HOTSTACK_STATE_DIR: newDir('bigstate') },
    });
    const took = performance.now() - t0;
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, new RegExp(`Error 27: EFBIG: the payload's base ${big} is 629145600 bytes, more than hotstack reads of a mapped object \\(536870912\\)`));
    const rss = Number(/maxrss=(\d+)/.exec(r.stderr)?.[1]);
    assert.ok(rss > 0 && rss < 400_000, `peak memory ${rss} KiB: the file was not read whole`);
    assert.ok(took < 10_000, `took ${took} ms`);
    await alive(b, 'after EFBIG');
  });

  test('a device the target maps is never opened', async () => {
    const dir = newDir('dev');
    const src = join(dir, 'mapdev.c');
    writeFileSync(src, [
      '#include <fcntl.h>', '#include <stdio.h>', '#include <sys/mman.h>', '#include <unistd.h>',
      'int main(void) {',
      '  int fd = open("/dev/zero", O_RDONLY);',
      '  if (fd < 0 || mmap(0, 4096, PROT_READ, MAP_PRIVATE, fd, 0) == MAP_FAILED) return 1;',
      '  puts("ready"); fflush(stdout);',
      '  char c; while (read(0, &c, 1) == 1) if (c == \'q\') return 0;',
      '  return 0;', '}', '',
    ].join('\n'));
    const bin = join(dir, 'mapdev');
    assert.equal(spawnSync('gcc', ['-O1', '-o', bin, src]).status, 0);
    const b = await procs.start(bin);
    const line = readFileSync(`/proc/${b.pid}/maps`, 'utf8').split('\n').find((l) => l.endsWith('/dev/zero'));
    assert.ok(line, 'the device is mapped');
    const [start, end] = line.split(' ')[0]!.split('-').map((x) => BigInt('0x' + x).toString(16));
    const trace = join(dir, 'strace.log');
    const r = spawnSync('strace', ['-f', '-e', 'trace=open,openat', '-o', trace, process.execPath, HOTSTACK_BIN, '--pid', String(b.pid), 'load', files['hello']!], {
      encoding: 'utf8', env: { ...process.env, HOTSTACK_STATE_DIR: newDir('devstate') },
    });
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, /EINVAL: payload was built for base build-id [0-9a-f]+, which matches no object loaded in the process/);
    const opened = readFileSync(trace, 'utf8');
    assert.match(opened, /map_files\//, 'objects were opened through map_files');
    assert.doesNotMatch(opened, new RegExp(`map_files/${start}-${end}"`), 'the /dev/zero mapping was not opened');
  });
});

describe('the state file is a cache of the copy in the process', () => {
  test('a load writes it only before each mapping and once at the end', async () => {
    const b = await procs.start(files['base']!);
    const dir = newDir('writes');
    const trace = join(dir, 'strace.log');
    const r = spawnSync('strace', ['-f', '-e', 'trace=rename,renameat,renameat2', '-o', trace, process.execPath, HOTSTACK_BIN, '--pid', String(b.pid), 'load', files['hello']!], {
      encoding: 'utf8', env: { ...process.env, HOTSTACK_STATE_DIR: dir },
    });
    assert.equal(r.status, 0, r.stderr);
    const writes = readFileSync(trace, 'utf8').split('\n').filter((l) => /\.json\.tmp", .*\.json"/.test(l)).length;
    // The intents of the one span holding the runtime page, the state's copy and the payload's three
    // regions, written before its mmap, and the final state: every other save goes to the copy in
    // the process only (eleven file writes once, seven with a mapping each).
    assert.ok(writes >= 1 && writes <= 2, `${writes} state file writes`);
    const cli = new Cli(dir);
    assert.deepEqual(cli.states(b.pid), ['hello:APPLIED']);
    const file = readdirSync(dir).find((n) => n.endsWith('.json'))!;
    assert.match(readFileSync(join(dir, file), 'utf8'), /APPLIED/, 'the file holds the final state');
  });
});

/**
 * Where an upload's batch of mappings can be killed: at its end (the stop
 * for the signal a batch ends with), or, with a stop at each call (forced
 * here; the way for threads that block or catch every quiet signal), right
 * after the mmap, before the mprotects.
 */
const BATCH_KILLS: { how: string; env: Record<string, string> }[] = [
  { how: 'when the batch has run', env: { HOTSTACK_TEST_DIE_AT: 'batch-syscall-signal' } },
  { how: 'right after the mmap (a stop at each call)', env: { HOTSTACK_TEST_DIE_AT: 'batch-syscall-exit', HOTSTACK_TEST_BATCH: 'stops' } },
];

describe('a tool killed during upload leaks nothing (2.7)', () => {
  /** Bytes of private anonymous memory (hotstack's kind) mapped in `pid`. */
  function anonymousBytes(pid: number): bigint {
    let n = 0n;
    for (const line of readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n')) {
      const m = /^([0-9a-f]+)-([0-9a-f]+) \S{3}p [0-9a-f]+ \S+ 0\s*$/.exec(line);
      if (m) n += BigInt('0x' + m[2]) - BigInt('0x' + m[1]);
    }
    return n;
  }

  for (const { how, env } of BATCH_KILLS) {
    test(`killed ${how} of a payload's regions: the next command unmaps them`, async () => {
      const b = await procs.start(files['base']!);
      const cli = new Cli(newDir('leak'));
      // Once: the runtime page and the state's copy, so the next mmap is the payload's.
      expectCli(cli.run(b.pid, 'upload', 'hello', files['hello']!), { status: 0 }, 'upload');
      expectCli(cli.run(b.pid, 'unload', 'hello'), { status: 0 }, 'unload');
      const before = anonymousBytes(b.pid);
      // The payload's three regions are one mmap and two mprotects in one stub run: killed after
      // the mmap, the thread runs the mprotects by itself, then restores itself.
      const r = cli.raw(['--pid', String(b.pid), 'load', files['hello']!], { env: { HOTSTACK_TEST_MODE: '1', ...env } });
      assert.equal(r.signal, 'SIGKILL', `the tool was killed ${how}\n${r.stderr}`);
      assert.ok(anonymousBytes(b.pid) > before, 'the payload regions were mapped');
      // Killed before the mapping was recorded: the intents written before the mmap name its parts.
      expectCli(cli.run(b.pid, 'list'), { status: 0, stderr: /^hotstack: repaired an interrupted upload: freed the \d+ bytes at 0x[0-9a-f]+ \(3 mappings\) a killed hotstack had mapped but not yet recorded\n$/ }, 'list repairs');
      assert.deepEqual(cli.states(b.pid), []);
      assert.equal(anonymousBytes(b.pid), before, 'nothing of the killed upload remains');
      expectCli(cli.run(b.pid, 'load', files['hello']!), { status: 0, stderr: '' }, 'load again');
      assert.equal(await b.ask('v'), 'Hello World');
    });
  }
});

describe('a tool killed during the first upload leaks nothing but the runtime page (2.7)', () => {
  for (const { how, env } of BATCH_KILLS) {
    test(`killed ${how} of the span holding the runtime page, the state's copy and the payload`, async () => {
      const b = await procs.start(files['base']!);
      const cli = new Cli(newDir('leak-first'));
      const anon = (): bigint[] => readFileSync(`/proc/${b.pid}/maps`, 'utf8').split('\n')
        .map((l) => /^([0-9a-f]+)-([0-9a-f]+) \S{3}p [0-9a-f]+ \S+ 0\s*$/.exec(l))
        .filter((m): m is RegExpExecArray => m !== null).map((m) => BigInt('0x' + m[2]) - BigInt('0x' + m[1]));
      const before = anon().reduce((a, n) => a + n, 0n);
      const unpatched = await b.ask('v');
      // The runtime page's mmap borrows the thread's own system call instruction; the mprotects of the
      // rest run from the new page, so killed during them, the thread finishes by itself.
      const r = cli.raw(['--pid', String(b.pid), 'load', files['hello']!], { env: { HOTSTACK_TEST_MODE: '1', ...env } });
      assert.equal(r.signal, 'SIGKILL', `the tool was killed ${how}\n${r.stderr}`);
      assert.equal(await b.ask('v'), unpatched, 'the target runs on, unpatched');
      expectCli(cli.run(b.pid, 'list'), { status: 0, stderr: /^hotstack: repaired an interrupted upload: freed the \d+ bytes at 0x[0-9a-f]+ \(\d mappings\) a killed hotstack had mapped but not yet recorded\n$/ }, 'list repairs');
      assert.equal(anon().reduce((a, n) => a + n, 0n), before + 4096n, 'only the runtime page remains (recorded, reused)');
      expectCli(cli.run(b.pid, 'load', files['hello']!), { status: 0, stderr: '' }, 'load again');
      assert.equal(await b.ask('v'), 'Hello World');
    });
  }
});

describe('a range the program maps after hotstack read its maps', () => {
  test('the span goes to the next free range and the program\'s page stays, on the first upload and a later one', async () => {
    const b = await procs.start(files['base']!);
    const cli = new Cli(newDir('hint-taken'));
    // The switch maps a PROT_NONE page at the first hint, as the program's own thread could
    // between the maps read at open and the stop: the mmap there is EEXIST, the next is tried.
    const taken = { env: { HOTSTACK_TEST_MODE: '1', HOTSTACK_TEST_TAKE_HINT: '1' } };
    const pages = (): number => readFileSync(`/proc/${b.pid}/maps`, 'utf8').split('\n').filter((l) => {
      const m = /^([0-9a-f]+)-([0-9a-f]+) ---p 00000000 00:00 0\s*$/.exec(l);
      return m !== null && BigInt('0x' + m[2]) - BigInt('0x' + m[1]) === 4096n;
    }).length;
    const before = pages();
    let r = cli.raw(['--pid', String(b.pid), 'load', files['hello']!], taken);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(pages(), before + 1, 'the page at the first hint is the program\'s: left alone');
    assert.equal(await b.ask('v'), 'Hello World');
    expectCli(cli.run(b.pid, 'revert', 'hello'), { status: 0 }, 'revert');
    expectCli(cli.run(b.pid, 'unload', 'hello'), { status: 0 }, 'unload');
    r = cli.raw(['--pid', String(b.pid), 'load', files['hello']!], taken);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(pages(), before + 2, 'and again with the runtime page there');
    assert.equal(await b.ask('v'), 'Hello World');
    expectCli(cli.run(b.pid, 'list'), { status: 0, stderr: '' }, 'nothing to repair');
  });
});

describe('mapping intents in the state file are untrusted', () => {
  test('malformed ones make the file corrupt (the state comes from the process); an unknown range is left alone', async () => {
    const b = await procs.start(files['base']!);
    const dir = newDir('intents');
    const cli = new Cli(dir);
    expectCli(cli.run(b.pid, 'load', files['hello']!), { status: 0 }, 'load');
    const file = join(dir, readdirSync(dir).find((n) => n.endsWith('.json'))!);
    const orig = readFileSync(file, 'utf8');
    const maps = (): string => readFileSync(`/proc/${b.pid}/maps`, 'utf8');
    const before = maps();
    const bad = [[null], [{ addr: 'abc', size: 4096, perms: 'r--p' }], [{ addr: '4096', size: 'x', perms: 'r--p' }], [{ addr: '4096', size: 4096, perms: 'rwxs' }]];
    for (const intents of bad) {
      const f = JSON.parse(orig) as { runtime: Record<string, unknown> };
      f.runtime.intents = intents;
      writeFileSync(file, JSON.stringify(f));
      expectCli(cli.run(b.pid, 'list'), { status: 0, stderr: /state file .* is corrupt \(malformed mapping intent\): recovered the state from the copy kept in process/ }, JSON.stringify(intents));
    }
    // Well formed, but naming memory hotstack never mapped (here the program's own text): not unmapped.
    const text = runtimeAddress(b.pid, files['base']!, 'main') & ~0xfffn;
    const f = JSON.parse(orig) as { runtime: Record<string, unknown> };
    f.runtime.intent = { addr: text.toString(), size: 4096, perms: 'r-xp' };
    writeFileSync(file, JSON.stringify(f));
    expectCli(cli.run(b.pid, 'list'), { status: 0, stderr: '' }, 'an intent naming the program text');
    assert.equal(maps(), before, 'nothing unmapped');
    assert.equal(await b.ask('v'), 'Hello World');
  });
});

/**
 * The base started as pid 1 of a new PID namespace (with its own /proc),
 * a state directory both views share, and a hotstack run inside the
 * namespace (on pid 1).
 */
async function inPidNamespace(tag: string): Promise<{ b: BaseProcess; hostPid: number; state: string; inside: (...args: string[]) => CliResult }> {
  const dir = newDir(tag);
  const wrapper = join(dir, 'in-namespace');
  writeFileSync(wrapper, `#!/bin/sh\nexec unshare --pid --fork --mount-proc ${files['base']!}\n`);
  chmodSync(wrapper, 0o755);
  const b = await procs.start(wrapper);
  const hostPid = Number(readFileSync(`/proc/${b.pid}/task/${b.pid}/children`, 'utf8').trim().split(/\s+/)[0]);
  assert.ok(hostPid > 0 && readFileSync(`/proc/${hostPid}/status`, 'utf8').includes('NSpid:\t' + hostPid + '\t1'), 'the base is pid 1 in its namespace');
  const state = newDir(`${tag}-state`);
  const inside = (...args: string[]): CliResult => {
    const argv = [...enterNamespace(hostPid), process.execPath, HOTSTACK_BIN, '--pid', '1', ...args];
    const r = spawnSync('nsenter', argv, { encoding: 'utf8', env: { ...process.env, HOTSTACK_STATE_DIR: state } });
    return { cmd: `nsenter ${argv.join(' ')}`, status: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr };
  };
  return { b, hostPid, state, inside };
}

/** nsenter arguments entering the PID and mount namespaces of `pid`, up to the command. */
const enterNamespace = (pid: number): string[] => ['--target', String(pid), '--pid', '--mount', '--'];

/**
 * A process inside the namespace of `hostPid` holding hotstack's lock on its
 * pid 1 (through lockProcess itself) until `release()` closes its input.
 */
async function holdLockInside(hostPid: number, state: string): Promise<{ release: () => Promise<void> }> {
  const script = join(newDir('holder'), 'hold.mjs');
  writeFileSync(script, [
    'const { lockProcess } = await import(process.argv[2]);',
    'const lock = lockProcess(1, 2000);',
    "process.stdout.write('locked\\n');",
    'process.stdin.resume();',
    "process.stdin.on('end', () => { lock.release(); process.exit(0); });",
  ].join('\n'));
  const lockModule = new URL('../src/targets/process/index.js', import.meta.url).pathname;
  const holder = spawn('nsenter', [...enterNamespace(hostPid), process.execPath, script, lockModule], {
    stdio: ['pipe', 'pipe', 'inherit'], env: { ...process.env, HOTSTACK_STATE_DIR: state },
  });
  const exited = new Promise<number | null>((done) => holder.on('exit', done));
  await new Promise<void>((done, failed) => {
    holder.stdout.on('data', (d: Buffer) => d.toString().includes('locked') && done());
    void exited.then((code) => failed(new Error(`the lock holder exited (${code}) before taking the lock`)));
  });
  return {
    release: async () => {
      holder.stdin.end();
      assert.equal(await exited, 0, 'the holder released the lock and exited');
    },
  };
}

describe('one lock per process, whichever PID namespace looks (issue 11: 2.3)', () => {
  test('held inside a PID namespace: a hotstack on the host waits, then EBUSY; and the other way round', async () => {
    const { b, hostPid, state, inside } = await inPidNamespace('pidns-lock');
    const inner = await holdLockInside(hostPid, state);
    const host = new Cli(state);
    try {
      expectError(host.run(hostPid, 'load', files['hello']!), 'EBUSY',
        new RegExp(`another hotstack is acting on process ${hostPid} by pid \\d+ of another PID namespace \\(pidns \\d+\\) \\(lock .*/pidns\\d+-pid1\\.lock\\)`), 'host while the namespace holds it');
    } finally {
      await inner.release();
    }
    assert.equal(await b.ask('v'), '-unstable', 'nothing was loaded meanwhile');
    const saved = process.env.HOTSTACK_STATE_DIR;
    process.env.HOTSTACK_STATE_DIR = state;
    const outer = lockProcess(hostPid, 100);
    try {
      expectError(inside('list'), 'EBUSY', new RegExp(`another hotstack is acting on process 1 by pid ${process.pid} of another PID namespace`), 'inside while the host holds it');
    } finally {
      outer.release();
      process.env.HOTSTACK_STATE_DIR = saved;
    }
    // Released on both sides: either view acts, and sees what the other did.
    const r = inside('load', files['hello']!);
    assert.equal(r.status, 0, r.stderr);
    assert.match(host.run(hostPid, 'list').stdout, /hello\s+\| APPLIED/, 'the host sees the payload loaded inside');
    assert.equal(await b.ask('v'), 'Hello World');
    // And the host maps into the namespace's process: a batch that ends with a signal names its
    // own thread by the ids its namespace gives it (host pids there would be another process).
    expectCli(host.run(hostPid, 'revert', 'hello'), { status: 0 }, 'host revert');
    expectCli(host.run(hostPid, 'unload', 'hello'), { status: 0 }, 'host unload');
    expectCli(host.run(hostPid, 'load', files['hello']!), { status: 0, stderr: '' }, 'host load');
    assert.equal(await b.ask('v'), 'Hello World');
  });
});

describe('the state lives in the process too (2.3, 2.9)', () => {
  test('a corrupt state file: the state comes back from the process, nothing is orphaned', async () => {
    const b = await procs.start(files['base']!);
    const dir = newDir('corrupt');
    const cli = new Cli(dir);
    expectCli(cli.run(b.pid, 'load', files['hello']!), { status: 0, stderr: '' }, 'load');
    const path = join(dir, `${stateName(b.pid)}.json`);
    writeFileSync(path, '{"key": truncated');
    const r = cli.run(b.pid, 'list', '--json');
    expectCli(r, { status: 0, stderr: new RegExp(`^hotstack: state file ${path} is corrupt \\(.*\\): recovered the state from the copy kept in process ${b.pid}`) }, 'list');
    assert.deepEqual((JSON.parse(r.stdout) as ListEntryJson[]).map((p) => `${p.name}:${p.state}`), ['hello:APPLIED']);
    expectCli(cli.run(b.pid, 'revert', 'hello'), { status: 0, stdout: 'Reverting hello... completed\n' }, 'revert');
    assert.equal(await b.ask('v'), '-unstable');
    assert.doesNotThrow(() => JSON.parse(readFileSync(path, 'utf8')), 'the file was rewritten');
    expectCli(cli.run(b.pid, 'list'), { status: 0, stderr: '' }, 'list after');
  });

  test('a corrupt state file and no copy in the process: EIO naming the file and what to do', async () => {
    const b = await procs.start(files['base']!);
    const dir = newDir('corrupt2');
    const cli = new Cli(dir);
    expectCli(cli.run(b.pid, 'upload', 'hello', files['hello']!), { status: 0 }, 'upload');
    wipeMirror(b.pid);
    writeFileSync(join(dir, `${stateName(b.pid)}.json`), 'garbage');
    expectError(cli.run(b.pid, 'list'), 'EIO', /state file .*\.json is corrupt \(.*\); move it away to start afresh/, 'list');
  });

  test('loaded from inside a PID namespace, seen from the host: not applied twice, state files of either view lose nothing', async () => {
    const { b, hostPid, state, inside } = await inPidNamespace('pidns');
    let r = inside('load', files['hello']!);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, `Uploading ${files['hello']!}... completed\nApplying hello... completed\n`);
    assert.equal(await b.ask('v'), 'Hello World');
    // The host, with the same state directory: its stale-file sweep removes the namespace's file (pid 1 is another process here).
    const host = new Cli(state);
    const l = host.run(hostPid, 'list', '--json');
    expectCli(l, { status: 0, stderr: /found in the process itself/ }, 'host list');
    assert.deepEqual((JSON.parse(l.stdout) as ListEntryJson[]).map((p) => `${p.name}:${p.state}`), ['hello:APPLIED']);
    expectCli(host.run(hostPid, 'load', files['hello']!), { status: 1, stderr: /EEXIST/ }, 'host load again');
    assert.equal(await b.ask('h'), '101', 'the load hook ran once');
    r = inside('list');
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /hello\s+\| APPLIED/, 'the namespace still sees it');
    expectCli(host.run(hostPid, 'revert', 'hello'), { status: 0, stdout: 'Reverting hello... completed\n' }, 'host revert');
    assert.equal(await b.ask('v'), '-unstable');
    r = inside('list', '--json');
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual((JSON.parse(r.stdout) as ListEntryJson[]).map((p) => `${p.name}:${p.state}`), ['hello:CHECKED']);
  });
});
