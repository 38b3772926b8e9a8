/**
 * Live processes beyond the conformance sequence (process-targets.md):
 * a shared library as the base object, payloads calling libc (IFUNCs,
 * far calls) and static functions of the base, build-ids that match no
 * object, and the errors a person meets (no such process, a process that
 * exited, no permission, a seccomp filter refusing executable memory),
 * plus where the state lives (survives the tool, dies with the process,
 * new processes are not patched).  Everything through `bin/hotstack`.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, realpathSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { buildAll, readBuildId } from './helpers/toolchain.js';
import { ProcessTarget } from '../src/targets/process/target.js';
import { Engine } from '../src/core/engine.js';
import { buildStress } from './helpers/stress.js';
import {
  Cli, Processes, buildLiveFixtures, canSwitchUser, deadPid, expectCli, freshStateDir, quote, readableCliCopy, stateDirFor,
  type LiveFixtures,
} from './helpers/live.js';

let files: Record<string, string> = {};
let live: LiveFixtures;
const stateDir = freshStateDir('objects');
const cli = new Cli(stateDir);
const procs = new Processes();
const buildDir = join(tmpdir(), `hotstack-live-fixtures-${process.pid}`);
const extraDirs: string[] = [];

before(() => {
  files = buildAll();
  live = buildLiveFixtures(buildDir, { base: files.base!, nopieBase: files['nopie/base']! });
});

after(async () => {
  await procs.stopAll();
  for (const d of [stateDir, buildDir, ...extraDirs]) rmSync(d, { recursive: true, force: true });
});

const uploaded = (file: string) => `Uploading ${file}... completed\n`;
const loaded = (file: string, name: string) => `Uploading ${file}... completed\nApplying ${name}... completed\n`;

describe('a shared library as the base object', () => {
  test('a payload built against libgreet.so patches greet() in the running program', async () => {
    const p = await procs.start(live.greetMain);
    assert.equal(await p.ask('g'), 'hello from libgreet');
    const libId = readBuildId(live.libgreet);
    assert.notEqual(readBuildId(live.greetMain), libId, 'the program and the library have different build-ids');
    assert.equal(readBuildId(live.greetPatch, '.livepatch.xen_depends'), libId);

    expectCli(cli.run(p.pid, 'load', live.greetPatch), { status: 0, stdout: loaded(live.greetPatch, 'greet_patch'), stderr: '' });
    // The replacement calls the library's static greet_suffix ("libgreet.c#greet_suffix") and snprintf.
    assert.equal(await p.ask('g'), 'patched greet!');
    const list = cli.list(p.pid);
    assert.equal(list.length, 1);
    assert.deepEqual(
      { name: list[0]!.name, state: list[0]!.state, base: list[0]!.base, depends: list[0]!.depends, metadata: list[0]!.metadata },
      {
        name: 'greet_patch', state: 'APPLIED', base: { path: realpathSync(live.libgreet), buildId: libId }, depends: libId,
        metadata: ['fixture=greet_patch'],
      },
      'list --json names the library as the base',
    );
    // The text table names it too, in its last column (the file name, not the program's).
    expectCli(cli.run(p.pid, 'list'), { status: 0, stdout: /^greet_patch {29}\| APPLIED {4}\| fixture=greet_patch \| libgreet\.so$/m, stderr: '' });
    expectCli(cli.run(p.pid, 'revert', 'greet_patch'), { status: 0, stdout: 'Reverting greet_patch... completed\n', stderr: '' });
    assert.equal(await p.ask('g'), 'hello from libgreet');
    expectCli(cli.run(p.pid, 'unload', 'greet_patch'), { status: 0, stdout: 'Unloading greet_patch... completed\n', stderr: '' });
    expectCli(cli.run(p.pid, 'list'), { status: 0, stdout: 'Nothing to list\n', stderr: '' });
    assert.equal(await p.ask('g'), 'hello from libgreet');
    await p.stop();
  });

  test('next to a library payload, a payload for an object not mapped in the program is refused', async () => {
    const p = await procs.start(live.greetMain);
    expectCli(cli.run(p.pid, 'load', live.greetPatch), { status: 0, stdout: loaded(live.greetPatch, 'greet_patch'), stderr: '' });
    // hello's base (the test base program) is not mapped here: EINVAL naming its build-id.
    const baseId = readBuildId(files.base!);
    expectCli(cli.run(p.pid, 'upload', 'hello', files.hello!), {
      status: 1, stdout: `Uploading ${files.hello}... failed\n`, stderr: new RegExp(`^Error 22: EINVAL: .*${baseId}`),
    });
    assert.deepEqual(cli.states(p.pid), ['greet_patch:APPLIED']);
    assert.equal(await p.ask('g'), 'patched greet!');
    await p.stop();
  });
});

describe('payloads calling libc and static functions of the base', () => {
  for (const [label, baseKey, payload] of [
    ['PIE', 'base', () => live.libcCalls],
    ['non-PIE', 'nopie/base', () => live.nopieLibcCalls],
  ] as const) {
    test(`snprintf, strlen (IFUNC), getpid and base.c#base_helper from a payload (${label} base)`, async () => {
      const p = await procs.start(files[baseKey]!);
      const file = payload();
      expectCli(cli.run(p.pid, 'load', file), { status: 0, stdout: loaded(file, 'libc_calls'), stderr: '' });
      const c0 = Number(await p.ask('c'));
      // strlen("twelve chars") is 12 only if the IFUNC was resolved to an implementation.
      assert.equal(await p.ask('v'), `libc ${p.pid} 12 1002`, 'answer of the patched extra_version');
      assert.equal(await p.ask('v'), `libc ${p.pid} 12 1002`, 'and again');
      assert.equal(Number(await p.ask('c')), c0 + 2, 'base_counter reached through the GOT slot of the payload');
      assert.equal(await p.ask('b'), '1001', 'base_helper itself untouched');
      expectCli(cli.run(p.pid, 'revert', 'libc_calls'), { status: 0, stdout: 'Reverting libc_calls... completed\n', stderr: '' });
      assert.equal(await p.ask('v'), '-unstable');
      expectCli(cli.run(p.pid, 'unload', 'libc_calls'), { status: 0, stdout: 'Unloading libc_calls... completed\n', stderr: '' });
      await p.stop();
    });
  }

  test('an upload stops the process once: for the runtime page, the state\'s copy, the payload memory and every IFUNC resolver', async () => {
    const p = await procs.start(files.base!);
    const env = process.env.HOTSTACK_STATE_DIR;
    process.env.HOTSTACK_STATE_DIR = stateDir;
    const t = ProcessTarget.open(p.pid);
    try {
      const rec = new Engine(t).upload('libc_calls', readFileSync(live.libcCalls));
      // strlen is an IFUNC in libc: its resolver ran in the process (the answer below shows which implementation it gave).
      assert.ok(rec.externals?.some((x) => x.symbol === 'strlen'), JSON.stringify(rec.externals));
      // In a fresh process: the runtime page, the three regions with the state's copy made at the first one's record, and the resolver calls.
      assert.equal(t.pauses.length, 1, `stops: ${t.pauses.length}`);
    } finally {
      t.close();
      if (env === undefined) delete process.env.HOTSTACK_STATE_DIR;
      else process.env.HOTSTACK_STATE_DIR = env;
    }
    expectCli(cli.run(p.pid, 'apply', 'libc_calls'), { status: 0, stdout: 'Applying libc_calls... completed\n', stderr: '' });
    assert.equal(await p.ask('v'), `libc ${p.pid} 12 1002`, 'answer of the patched extra_version');
    await p.stop();
  });

  test('helper fixture (base.c#base_helper) applies on a live process: minor answers 1006', async () => {
    const p = await procs.start(files.base!);
    expectCli(cli.run(p.pid, 'load', files.helper!), { status: 0, stdout: loaded(files.helper!, 'helper'), stderr: '' });
    assert.equal(await p.ask('m'), '1006');
    await p.stop();
  });
});

describe('.livepatch.xen_depends that matches no object of the process', () => {
  test('upload EINVAL naming the build-id; nothing loaded, process unharmed', async () => {
    const p = await procs.start(files.base!);
    // cet/hello was built for the CET base, which is not mapped in this process.
    const want = readBuildId(files['cet/hello']!, '.livepatch.xen_depends');
    assert.notEqual(want, readBuildId(files.base!));
    expectCli(cli.run(p.pid, 'upload', 'hello', files['cet/hello']!), {
      status: 1, stdout: `Uploading ${files['cet/hello']}... failed\n`, stderr: new RegExp(`^Error 22: EINVAL: .*${want}`),
    });
    expectCli(cli.run(p.pid, 'load', live.greetPatch), {
      status: 1, stdout: `Uploading ${live.greetPatch}... failed\n`,
      stderr: new RegExp(`^Error 22: EINVAL: .*${readBuildId(live.libgreet)}`),
    });
    expectCli(cli.run(p.pid, 'list'), { status: 0, stdout: 'Nothing to list\n', stderr: '' });
    // Refused before anything was mapped: no state, no copy of it, no runtime page in the process.
    assert.doesNotMatch(readFileSync(`/proc/${p.pid}/maps`, 'utf8'), /^\S+ r-xp 00000000 00:00 0 +$/m, 'no anonymous code page of hotstack');
    assert.ok(!readdirSync(stateDir).some((n) => n.startsWith(`${p.pid}-`)), 'no state file');
    assert.equal(await p.ask('v'), '-unstable');
    await p.stop();
  });
});

describe('errors a person can act on', () => {
  test('no such process: ESRCH, exit 1, for every command', () => {
    const pid = deadPid();
    for (const args of [['list'], ['list', '--json'], ['upload', 'hello', files.hello!], ['apply', 'hello'], ['revert', 'hello'], ['load', files.hello!]]) {
      const r = cli.run(pid, ...args);
      expectCli(r, { status: 1, stderr: new RegExp(`Error 3: ESRCH: .*\\b${pid}\\b`) });
      assert.doesNotMatch(r.stdout, /completed/, `nothing completed: ${r.cmd}`);
    }
  });

  test('process exited between two commands: clear ESRCH, its state is gone', async () => {
    const p = await procs.start(files.base!);
    expectCli(cli.run(p.pid, 'load', files.hello!), { status: 0, stdout: loaded(files.hello!, 'hello'), stderr: '' });
    const stateFiles = () => readdirSync(stateDir).filter((n) => n.startsWith(`${p.pid}-`) && n.endsWith('.json'));
    assert.equal(stateFiles().length, 1, `one state file for ${p.pid}: ${readdirSync(stateDir).join(', ')}`);
    await p.stop();
    for (const args of [['list'], ['revert', 'hello'], ['upload', 'bye', files.bye!]]) {
      expectCli(cli.run(p.pid, ...args), {
        status: 1, stderr: new RegExp(`^hotstack: Error 3: ESRCH: process ${p.pid} (does not exist|exited)`),
      });
    }
    // The next command on any process clears the state files of dead processes.
    const other = await procs.start(files.base!);
    expectCli(cli.run(other.pid, 'list'), { status: 0, stdout: 'Nothing to list\n', stderr: '' });
    assert.deepEqual(stateFiles(), [], `state of the exited ${p.pid} removed: ${readdirSync(stateDir).join(', ')}`);
    await other.stop();
  });

  test('not root: EPERM/EACCES with a hint, and the process is unharmed', { skip: !canSwitchUser() && 'needs root and setpriv' }, async () => {
    const p = await procs.start(files.base!);
    const nobodyState = stateDirFor(65534, 'nobody');
    extraDirs.push(nobodyState);
    // nobody runs a copy of the CLI it can read: the checkout may be under a 0700 directory such as /root.
    const copy = readableCliCopy();
    extraDirs.push(copy.dir);
    const asNobody = new Cli(nobodyState);
    for (const args of [['upload', 'hello', files.hello!], ['load', files.hello!]]) {
      const r = asNobody.raw(['--pid', String(p.pid), ...args], { asUser: 65534, bin: copy.bin });
      expectCli(r, { status: 1, stderr: /Error (1: EPERM|13: EACCES): .*(root|CAP_SYS_PTRACE|ptrace_scope|same user|process's user)/ });
      assert.doesNotMatch(r.stdout, /completed/, `nothing completed: ${r.cmd}`);
    }
    // Even `list` checks that this user may trace the process before reading any state
    // (else another user's state directory would show an empty stack).
    const unwritable = freshStateDir('root-only');
    extraDirs.push(unwritable);
    const r = new Cli(join(unwritable, 'sub')).raw(['--pid', String(p.pid), 'list'], { asUser: 65534, bin: copy.bin });
    expectCli(r, { status: 1, stderr: /Error 1: EPERM: not permitted to trace process \d+: .*(root|CAP_SYS_PTRACE)/ });
    assert.equal(await p.ask('v'), '-unstable');
    expectCli(cli.run(p.pid, 'list'), { status: 0, stdout: 'Nothing to list\n', stderr: '' });
    // The process is not left traced or stopped.
    const status = readFileSync(`/proc/${p.pid}/status`, 'utf8');
    assert.match(status, /^TracerPid:\s+0$/m);
    assert.match(status, /^State:\s+S/m);
    await p.stop();
  });

  test('a seccomp filter refusing PROT_EXEC: upload fails naming seccomp / W^X; the process runs on', async () => {
    const p = await procs.start(live.seccompBase);
    assert.match(readFileSync(`/proc/${p.pid}/status`, 'utf8'), /^Seccomp:\s+2$/m, 'the fixture runs under a filter');
    assert.equal(await p.ask('v'), '-unstable');
    const maps = () => readFileSync(`/proc/${p.pid}/maps`, 'utf8');
    const mapsBefore = maps();
    const r = cli.run(p.pid, 'upload', 'hello', live.seccompHello);
    expectCli(r, {
      status: 1, stdout: `Uploading ${live.seccompHello}... failed\n`, stderr: /^Error (1: EPERM|13: EACCES): .*seccomp/i,
    });
    assert.match(r.stderr, /W\^X|MemoryDenyWriteExecute|PROT_EXEC|executable/, `names the executable-memory policy\n${r.stderr}`);
    expectCli(cli.run(p.pid, 'load', live.seccompHello), {
      status: 1, stdout: `Uploading ${live.seccompHello}... failed\n`, stderr: /seccomp/i,
    });
    expectCli(cli.run(p.pid, 'list'), { status: 0, stdout: 'Nothing to list\n', stderr: '' });
    assert.equal(await p.ask('v'), '-unstable');
    assert.equal(await p.ask('m'), '42');
    assert.equal(maps(), mapsBefore, 'the failed uploads left no mapping behind');
    const status = readFileSync(`/proc/${p.pid}/status`, 'utf8');
    assert.match(status, /^TracerPid:\s+0$/m);
    await p.stop();
  });
});

describe('where the state lives', () => {
  test('state survives the tool exiting; a new process of the same binary is not patched', async () => {
    const a = await procs.start(files.base!);
    expectCli(cli.run(a.pid, 'load', files.hello!), { status: 0, stdout: loaded(files.hello!, 'hello'), stderr: '' });
    expectCli(cli.run(a.pid, 'upload', 'bye', files.bye!), { status: 0, stdout: uploaded(files.bye!), stderr: '' });
    // Separate invocations see the same list.
    assert.deepEqual(cli.states(a.pid), ['hello:APPLIED', 'bye:CHECKED']);
    assert.deepEqual(cli.states(a.pid), ['hello:APPLIED', 'bye:CHECKED']);
    expectCli(cli.run(a.pid, 'apply', 'bye'), { status: 0, stdout: 'Applying bye... completed\n', stderr: '' });
    assert.deepEqual(cli.states(a.pid), ['hello:APPLIED', 'bye:APPLIED']);
    assert.equal(await a.ask('v'), 'Bye World!');

    const b = await procs.start(files.base!);
    expectCli(cli.run(b.pid, 'list'), { status: 0, stdout: 'Nothing to list\n', stderr: '' });
    assert.equal(await b.ask('v'), '-unstable', 'a new process of the same binary is not patched');
    // And it has its own stack: hello loads there independently.
    expectCli(cli.run(b.pid, 'load', files.hello!), { status: 0, stdout: loaded(files.hello!, 'hello'), stderr: '' });
    assert.equal(await b.ask('v'), 'Hello World');
    assert.equal(await a.ask('v'), 'Bye World!');
    expectCli(cli.run(b.pid, 'revert', 'hello'), { status: 0, stdout: 'Reverting hello... completed\n', stderr: '' });
    assert.deepEqual(cli.states(a.pid), ['hello:APPLIED', 'bye:APPLIED'], 'acting on b left a alone');
    assert.equal(await a.ask('v'), 'Bye World!');
    // The state is keyed by pid and start time.
    const start = readFileSync(`/proc/${a.pid}/stat`, 'utf8').split(') ')[1]!.split(' ')[22 - 3];
    assert.ok(readdirSync(stateDir).some((n) => new RegExp(`^${quote(`${a.pid}-${start}`)}\\b`).test(n)), `state of ${a.pid} keyed by start time ${start}: ${readdirSync(stateDir).join(', ')}`);
    await a.stop();
    await b.stop();
  });
});

describe('what each stop holds', () => {
  test('memory is mapped with one thread held while the others run on; an action stops them all', async () => {
    const fx = buildStress(join(buildDir, 'stress'));
    const p = await procs.start(fx.base);
    assert.equal(await p.ask('U 2'), 'ok 2', 'two more threads');
    const tids = readdirSync(`/proc/${p.pid}/task`).map(Number);
    assert.ok(tids.length >= 3, `threads: ${tids.join(' ')}`);
    const tracers = (): number[] => tids.map((tid) => Number(/^TracerPid:\s*(\d+)/m.exec(readFileSync(`/proc/${p.pid}/task/${tid}/status`, 'utf8'))![1]));
    const env = process.env.HOTSTACK_STATE_DIR;
    process.env.HOTSTACK_STATE_DIR = stateDir;
    const t = ProcessTarget.open(p.pid);
    try {
      const near = t.bases()[0]!;
      let whileMapping: number[] = [];
      const [addr] = t.allocate([{ size: 4096, perm: 'rw' }], near) as [bigint];
      t.batch(() => {
        whileMapping = tracers();
        t.free(addr, 4096);
      });
      const one = [...Array(tids.length - 1).fill(0), process.pid];
      assert.deepEqual(whileMapping.sort(), one, 'one thread held (traced by us), the others untraced');
      const whileActing = t.quiesce([], 1000, () => tracers());
      assert.deepEqual(whileActing, tids.map(() => process.pid), 'every thread held for an action');
      // A fleet's load: an action inside the stop that holds one thread stops the others for it only.
      const stops = t.pauses.length;
      const seen = t.batch(() => {
        const before = tracers();
        const during = t.quiesce([], 1000, () => tracers());
        return { before, during, after: tracers() };
      });
      assert.deepEqual(seen.before.sort(), one, 'one held before the action');
      assert.deepEqual(seen.during, tids.map(() => process.pid), 'every thread held for the action');
      assert.deepEqual(seen.after.sort(), one, 'the others run on after it, the one still held');
      assert.equal(t.pauses.length, stops + 1, 'one stop for both');
    } finally {
      t.close();
      if (env === undefined) delete process.env.HOTSTACK_STATE_DIR;
      else process.env.HOTSTACK_STATE_DIR = env;
    }
    assert.deepEqual(tracers(), tids.map(() => 0), 'nothing held afterwards');
    await p.stop();
  });
});
