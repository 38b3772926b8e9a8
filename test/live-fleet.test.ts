/**
 * `hotstack --all ...` and `--pid A,B,...`: one command over a fleet of
 * real processes. 50 copies of the fleet program: some exit while the
 * command runs, one has a thread parked inside the patched function
 * (EBUSY), and an unrelated program runs beside them (never selected).
 * Every selected process must answer with the patch, the others must be
 * untouched, and the same command run twice must be safe.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildAll, type BaseProcess } from './helpers/toolchain.js';
import { Cli, deadPid, expectCli, freshStateDir, HOTSTACK_BIN, Processes, showResult, type CliResult } from './helpers/live.js';
import { buildFleet, type FleetFixtures } from './helpers/fleet.js';
import type { FleetJson } from '../src/cli/json-types.js';
import { claim } from '../src/fleet/pool.js';

const COUNT = 50;
const EXITING = 8;

const files = buildAll();
const work = mkdtempSync(join(tmpdir(), 'hotstack-fleet-'));
const state = freshStateDir('fleet');
const cli = new Cli(state);
const procs = new Processes();
let fx: FleetFixtures;
const fleet: BaseProcess[] = [];
let parked: BaseProcess;
let exiting: BaseProcess[] = [];
let survivors: BaseProcess[] = [];
let unrelated: BaseProcess;

before(async () => {
  fx = buildFleet(join(work, 'build'), `test-${process.pid}-${Date.now()}`);
  for (let i = 0; i < COUNT; i++) fleet.push(await procs.start(fx.exe));
  fleet.sort((a, b) => a.pid - b.pid);
  // Handed out in pid order: the parked one first, the exiting ones last.
  parked = fleet[0]!;
  assert.equal(await parked.ask('p'), 'parked');
  exiting = fleet.slice(COUNT - EXITING);
  survivors = fleet.slice(1, COUNT - EXITING);
  unrelated = await procs.start(files.base!);
});

after(async () => {
  await procs.stopAll();
  rmSync(work, { recursive: true, force: true });
  rmSync(state, { recursive: true, force: true });
});

interface Line { pid: number; comm: string; result: string; detail: string }

/** The per-process lines `PID (comm): result: detail`, by pid; fails on a pid seen twice. */
function lines(r: CliResult): Map<number, Line> {
  const out = new Map<number, Line>();
  for (const l of r.stdout.split('\n')) {
    const m = /^(\d+) \((.*)\): (patched|skipped|failed): (.*)$/.exec(l);
    if (!m) continue;
    const pid = Number(m[1]);
    assert.ok(!out.has(pid), `process ${pid} reported twice\n${showResult(r)}`);
    out.set(pid, { pid, comm: m[2]!, result: m[3]!, detail: m[4]! });
  }
  return out;
}

/** Runs the CLI without waiting; `onFirstLine` runs when the first per-process line is printed. */
function runAsync(args: string[], onFirstLine: () => void): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [HOTSTACK_BIN, ...args], {
      env: { ...process.env, HOTSTACK_STATE_DIR: state }, stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    let fired = false;
    const timer = setTimeout(() => child.kill('SIGKILL'), 120_000);
    child.stdout.setEncoding('utf8').on('data', (s: string) => {
      stdout += s;
      if (!fired && /^\d+ \(/m.test(stdout)) {
        fired = true;
        onFirstLine();
      }
    });
    child.stderr.setEncoding('utf8').on('data', (s: string) => { stderr += s; });
    child.on('error', reject);
    child.on('close', (status, signal) => {
      clearTimeout(timer);
      resolve({ cmd: `hotstack ${args.join(' ')}`, status, signal, stdout, stderr });
    });
  });
}

test('--all load: every process of the build is patched; exited ones skipped, a parked thread fails alone (EBUSY), others untouched', async () => {
  const r = await runAsync(['--all', '--jobs', '1', 'load', fx.fix, '--timeout', '300'], () => {
    // The command has started on the first processes; these go before it reaches them (signals:
    // the kernel ends them at once, where a 'q' would wait for the process to be scheduled).
    exiting.forEach((p, i) => p.child.kill(i % 2 ? 'SIGKILL' : 'SIGTERM'));
  });
  expectCli(r, { status: 2 }, 'the only failure is EBUSY');
  const got = lines(r);
  assert.deepEqual([...got.keys()].sort((a, b) => a - b), fleet.map((p) => p.pid), `one line per process of the build, none for others\n${showResult(r)}`);
  assert.ok(!got.has(unrelated.pid), 'the unrelated program is not selected');

  const p0 = got.get(parked.pid)!;
  assert.equal(p0.result, 'failed', showResult(r));
  assert.match(p0.detail, /^apply fleet_fix: EBUSY: .*thread \d+/);
  for (const p of exiting) assert.deepEqual(got.get(p.pid), { pid: p.pid, comm: 'fleet', result: 'skipped', detail: 'exited' }, showResult(r));
  for (const p of survivors) {
    assert.deepEqual(got.get(p.pid), { pid: p.pid, comm: 'fleet', result: 'patched', detail: 'upload fleet_fix, apply fleet_fix: completed' }, showResult(r));
  }
  assert.match(r.stdout, new RegExp(`\\npatched ${survivors.length}, skipped ${EXITING}, failed 1\\n$`));

  // What the processes themselves say.
  for (const p of survivors) assert.equal(await p.ask('v'), 'answer 2', `process ${p.pid}`);
  assert.equal(await parked.ask('v'), 'answer 1', 'the parked process is unpatched (its payload unloaded again)');
  assert.deepEqual(cli.list(parked.pid), [], 'and holds no payload');
  assert.equal(await unrelated.ask('v'), '-unstable');
  assert.deepEqual(cli.list(unrelated.pid), []);
});

test('--all load again: nothing done twice (skipped), --json has the same counts and per-process errno', () => {
  const r = cli.raw(['--all', 'load', fx.fix, '--timeout', '200', '--json']);
  expectCli(r, { status: 2, stderr: '' });
  const v = JSON.parse(r.stdout) as FleetJson;
  assert.equal(v.ok, false);
  assert.equal(v.action, 'load');
  assert.equal(v.name, 'fleet_fix');
  assert.deepEqual(v.summary, { patched: 0, skipped: survivors.length, failed: 1 });
  assert.deepEqual(v.processes.map((x) => x.pid), [parked, ...survivors].map((p) => p.pid), 'exited processes are no longer selected');
  for (const x of v.processes.slice(1)) assert.deepEqual([x.result, x.detail, x.errno], ['skipped', 'fleet_fix is already applied', null]);
  const bad = v.processes[0]!;
  assert.deepEqual([bad.result, bad.errno, bad.code], ['failed', 'EBUSY', -16]);
  assert.match(bad.message, /no safe moment within 200 ms/);
  assert.deepEqual(bad.steps!.map((s) => `${s.action}:${s.result}`), ['upload:completed', 'apply:failed', 'unload:completed']);
});

test('on a terminal: a progress bar on stderr once the run lasts a second, the same lines and counts', (t) => {
  if (spawnSync('script', ['--version']).status !== 0) return t.skip('no script(1) to give hotstack a terminal');
  // The parked process keeps the run going for 1.5 s (its apply retries until the timeout).
  const cmd = [process.execPath, HOTSTACK_BIN, '--all', '--jobs', '1', 'load', fx.fix, '--timeout', '1500'].map((a) => `'${a}'`).join(' ');
  const r = spawnSync('script', ['-qec', cmd, '/dev/null'], { encoding: 'utf8', env: { ...process.env, HOTSTACK_STATE_DIR: state }, timeout: 60_000 });
  const out = `exit ${r.status}\n${r.stdout}${r.stderr}`;
  assert.equal(r.status, 2, out);
  const total = survivors.length + 1;
  assert.match(r.stdout, new RegExp(`\\r\\[[#.]{30}\\] \\d+/${total} processes`), `a progress bar\n${out}`);
  assert.match(r.stdout, /\r\x1b\[K/, `cleared before the lines under it\n${out}`);
  assert.match(r.stdout, new RegExp(`patched 0, skipped ${survivors.length}, failed 1\\r?\\n$`), out);
});

test('--all list --json: every process with payloads, its stack; none other', () => {
  const r = cli.raw(['--all', 'list', '--json']);
  expectCli(r, { status: 0, stderr: '' });
  const v = JSON.parse(r.stdout) as FleetJson;
  // The parked process has a state file (an upload happened) but no payload now.
  assert.deepEqual(v.summary, { listed: survivors.length + 1, skipped: 0, failed: 0 });
  assert.deepEqual(v.processes.map((x) => x.pid), [parked, ...survivors].map((p) => p.pid));
  assert.deepEqual(v.processes[0]!.payloads, []);
  for (const x of v.processes.slice(1)) {
    assert.equal(x.comm, 'fleet');
    assert.deepEqual(x.payloads?.map((p) => `${p.name}:${p.state}:${p.base.path}`), [`fleet_fix:APPLIED:${fx.exe}`]);
  }
  // Text: each process's table under a header, then the counts.
  const t = cli.raw(['--all', 'list']);
  expectCli(t, { status: 0, stderr: '' });
  assert.equal(t.stdout.match(/^process \d+ \(fleet\):$/gm)?.length, survivors.length + 1);
  assert.equal(t.stdout.match(/^fleet_fix +\| APPLIED/gm)?.length, survivors.length);
  assert.match(t.stdout, new RegExp(`\\nlisted ${survivors.length + 1}, skipped 0, failed 0\\n$`));
});

test('narrowing: --pid A,B --pid C, --exe, --uid, --base-build-id', () => {
  const [a, b, c] = survivors;
  const dead = deadPid();
  let r = cli.raw(['--pid', `${a!.pid},${unrelated.pid}`, '--pid', String(dead), 'list', '--json']);
  expectCli(r, { status: 0, stderr: '' });
  let v = JSON.parse(r.stdout) as FleetJson;
  assert.deepEqual(v.summary, { listed: 1, skipped: 2, failed: 0 });
  const by = new Map(v.processes.map((x) => [x.pid, x]));
  assert.equal(by.get(a!.pid)!.result, 'listed');
  assert.deepEqual([by.get(unrelated.pid)!.result, by.get(unrelated.pid)!.detail], ['skipped', 'not selected: hotstack has no payloads in it']);
  assert.deepEqual([by.get(dead)!.result, by.get(dead)!.detail], ['skipped', 'exited']);

  // --exe: the fleet program's processes, not the unrelated one (which has no state anyway: use load's selection).
  r = cli.raw(['--all', '--exe', files.base!, 'load', fx.fix]);
  expectCli(r, { status: 0, stderr: /no process selected: no process with an object with build-id [0-9a-f]+ mapped, running / });
  assert.match(r.stdout, /^patched 0, skipped 0, failed 0\n$/);
  r = cli.raw(['--all', '--exe', fx.exe, 'list', '--json']);
  v = JSON.parse(r.stdout) as typeof v;
  assert.equal(v.summary.listed, survivors.length + 1);

  // --uid: nobody's processes (none of ours).
  r = cli.raw(['--all', '--uid', '65534', 'list', '--json']);
  expectCli(r, { status: 0, stderr: '' });
  assert.deepEqual((JSON.parse(r.stdout) as typeof v).summary, { listed: 0, skipped: 0, failed: 0 });
  r = cli.raw(['--all', '--uid', String(process.getuid!()), '--pid', `${b!.pid},${c!.pid}`, 'list', '--json']);
  assert.deepEqual((JSON.parse(r.stdout) as typeof v).summary, { listed: 2, skipped: 0, failed: 0 });

  // --base-build-id: of another object than the payload's base is a user error, before any process is touched.
  r = cli.raw(['--all', '--base-build-id', 'AB12', 'load', fx.fix]);
  expectCli(r, { status: 1, stdout: '', stderr: /^hotstack: Error 22: EINVAL: .*fleet_fix\.livepatch is built for the object with build-id [0-9a-f]+, not ab12\n$/ });
  r = cli.raw(['--all', '--base-build-id', 'ab12', 'list', '--json']);
  assert.deepEqual((JSON.parse(r.stdout) as typeof v).summary, { listed: 0, skipped: 0, failed: 0 });
  r = cli.raw(['--all', '--base-build-id', 'xyz', 'list']);
  expectCli(r, { status: 1, stderr: /--base-build-id "xyz" is not a build-id/ });
  // Fleet options on a single-process command.
  r = cli.raw(['--pid', String(a!.pid), '--exe', fx.exe, 'list']);
  expectCli(r, { status: 1, stdout: '', stderr: /^hotstack: Error 22: EINVAL: --exe narrows a fleet: add --all \(or give several --pid\)\n$/ });
  r = cli.raw(['--pid', `${a!.pid},x`, 'list']);
  expectCli(r, { status: 1, stderr: /--pid must be a whole number/ });
});

test('a fleet worker that dies: its process fails with the reason, another worker takes the rest; with no worker left, the rest are failed, not forgotten', () => {
  const set = survivors.slice(0, 6).map((p) => p.pid);
  const dies = set[1]!;
  // Workers only (test switch): which thread takes which process is then the workers' race alone.
  const run = (jobs: string): FleetJson => {
    const r = cli.raw(['--pid', set.join(','), '--jobs', jobs, 'list', '--json'], { env: { HOTSTACK_TEST_MODE: '1', HOTSTACK_TEST_FLEET_WORKERS_ONLY: '1', HOTSTACK_TEST_WORKER_EXIT: String(dies) } });
    assert.equal(r.status, 1, showResult(r));
    return JSON.parse(r.stdout) as FleetJson;
  };
  const two = run('2');
  const of = (j: FleetJson, pid: number) => j.processes.find((p) => p.pid === pid)!;
  assert.match(of(two, dies).message, /^internal error in a fleet worker: exit status 3$/);
  for (const pid of set.filter((p) => p !== dies)) assert.equal(of(two, pid).result, 'listed', `process ${pid}`);
  assert.deepEqual(two.summary, { listed: 5, skipped: 0, failed: 1 });
  // One worker: it dies at the second process; the four after it were never acted on.
  const one = run('1');
  assert.equal(of(one, set[0]!).result, 'listed');
  assert.match(of(one, dies).message, /exit status 3/);
  for (const pid of set.slice(2)) assert.match(of(one, pid).message, /^not acted on: the fleet workers stopped$/, `process ${pid}`);
});

test('fleet workers started before the CLI loads: a command refused first still exits at once; workers that die before the run fail nothing silently', () => {
  // Refused before any pool: the early workers must not keep it alive.
  let r = cli.raw(['--all', '--jobs', '3', 'load', join(work, 'missing.livepatch')], { timeoutMs: 20_000 });
  expectCli(r, { status: 1, stdout: '' });
  assert.match(r.stderr, /^hotstack: Error \d+: ENOENT: /);
  r = cli.raw(['--all', '--jobs', '2', 'frobnicate'], { timeoutMs: 20_000 });
  assert.equal(r.status, 1, showResult(r));
  // Every worker dies as it starts (before the pool posts the action): with workers only (test switch)
  // nothing is acted on, each process says so; else the main thread, one of the jobs, acts on every one.
  const set = survivors.slice(0, 3).map((p) => p.pid);
  r = cli.raw(['--pid', set.join(','), '--jobs', '2', 'list', '--json'], { env: { HOTSTACK_TEST_MODE: '1', HOTSTACK_TEST_FLEET_WORKERS_ONLY: '1', HOTSTACK_TEST_WORKER_EXIT: 'start' }, timeoutMs: 20_000 });
  assert.equal(r.status, 1, showResult(r));
  const j = JSON.parse(r.stdout) as FleetJson;
  assert.deepEqual(j.summary, { listed: 0, skipped: 0, failed: 3 });
  for (const p of j.processes) assert.match(p.message, /^not acted on: the fleet workers stopped$/, `process ${p.pid}`);
  for (const jobs of ['2', '3']) {
    r = cli.raw(['--pid', set.join(','), '--jobs', jobs, 'list', '--json'], { env: { HOTSTACK_TEST_MODE: '1', HOTSTACK_TEST_WORKER_EXIT: 'start' }, timeoutMs: 20_000 });
    assert.equal(r.status, 0, showResult(r));
    assert.deepEqual((JSON.parse(r.stdout) as FleetJson).summary, { listed: 3, skipped: 0, failed: 0 }, `--jobs ${jobs}`);
  }
  // More --jobs than prestarted, and fewer: the pool starts or stops workers to match; all listed.
  for (const jobs of ['1', '4']) {
    r = cli.raw(['--pid', set.join(','), '--jobs', jobs, 'list', '--json'], { timeoutMs: 20_000 });
    assert.equal(r.status, 0, showResult(r));
    assert.deepEqual((JSON.parse(r.stdout) as FleetJson).summary, { listed: 3, skipped: 0, failed: 0 });
  }
});

test('claim: a worker takes only processes it has been given (the scan hands them over as it finds them), each once', () => {
  const board = new Int32Array(new SharedArrayBuffer(4 * 3));
  board.fill(-1, 1);
  assert.equal(claim(board, 0, 2), 0);
  assert.equal(board[1], 0, 'worker 0 names what it acts on');
  assert.equal(claim(board, 1, 2), 1);
  // Nothing more given yet: no claim, nothing held, the next index untouched.
  assert.equal(claim(board, 0, 2), undefined);
  assert.equal(board[1], -1);
  assert.equal(board[0], 2);
  // A worker whose copy of the list is behind takes nothing yet; one that has more does.
  assert.equal(claim(board, 1, 2), undefined);
  assert.equal(claim(board, 0, 3), 2);
  assert.equal(claim(board, 1, 3), undefined);
});

test('--all revert, twice, then --all unload: every process back to its own code', async () => {
  let r = cli.raw(['--all', 'revert', 'fleet_fix', '--timeout', '200']);
  expectCli(r, { status: 0, stderr: '' });
  let got = lines(r);
  assert.equal(got.get(parked.pid)!.result, 'skipped');
  assert.equal(got.get(parked.pid)!.detail, 'no payload named fleet_fix is loaded in it');
  for (const p of survivors) assert.equal(got.get(p.pid)!.result, 'patched', showResult(r));
  assert.match(r.stdout, new RegExp(`\\npatched ${survivors.length}, skipped 1, failed 0\\n$`));
  for (const p of survivors) assert.equal(await p.ask('v'), 'answer 1', `process ${p.pid}`);

  r = cli.raw(['--all', 'revert', 'fleet_fix']);
  expectCli(r, { status: 0, stderr: '' });
  got = lines(r);
  for (const p of survivors) assert.deepEqual([got.get(p.pid)!.result, got.get(p.pid)!.detail], ['skipped', 'fleet_fix is already CHECKED']);

  r = cli.raw(['--all', 'unload', 'fleet_fix', '--json']);
  expectCli(r, { status: 0, stderr: '' });
  assert.deepEqual((JSON.parse(r.stdout) as FleetJson).summary, { patched: survivors.length, skipped: 1, failed: 0 });
  for (const p of survivors) assert.deepEqual(cli.list(p.pid), []);
  assert.equal(await unrelated.ask('v'), '-unstable');
});

test('a process whose program file was deleted (an upgrade) is still matched, by build-id and by --exe', async () => {
  const copy = join(work, 'fleet-old');
  copyFileSync(fx.exe, copy);
  chmodSync(copy, 0o755);
  const p = await procs.start(copy);
  rmSync(copy);
  let r = cli.raw(['--pid', `${p.pid},${unrelated.pid}`, 'load', fx.fix, '--json']);
  expectCli(r, { status: 0, stderr: '' });
  const v = JSON.parse(r.stdout) as FleetJson;
  assert.deepEqual(v.summary, { patched: 1, skipped: 1, failed: 0 });
  assert.deepEqual(v.processes.find((x) => x.pid === p.pid)!.result, 'patched');
  assert.equal(await p.ask('v'), 'answer 2');
  assert.deepEqual(cli.list(p.pid).map((e) => e.base.path), [`${copy} (deleted)`]);
  r = cli.raw(['--all', '--exe', copy, 'revert', 'fleet_fix']);
  expectCli(r, { status: 0, stdout: new RegExp(`^${p.pid} \\(fleet-old\\): patched: revert fleet_fix: completed\\npatched 1, skipped 0, failed 0\\n$`) });
  assert.equal(await p.ask('v'), 'answer 1');
});
