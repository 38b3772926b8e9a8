/**
 * Crash safety on live processes (process-targets.md, "Crash safety"): a
 * hotstack killed at any instant must not leave a payload half-applied;
 * the next command on that process finishes or undoes what it finds, and
 * says so on stderr.
 *
 * Two ways to kill the tool: HOTSTACK_FAULT=after-write:N (the tool
 * SIGKILLs itself right after its N-th code write of an action, the worst
 * instant), and a SIGKILL from outside at random instants of a loop of
 * apply/revert.  The base is the fixture service (extra_version answers
 * "-unstable", minor_version 42); twofunc patches both functions ("Two
 * World", 2) and replace patches extra_version ("Hello Again World!").
 * After every kill we look at the process from outside: the bytes of both
 * functions in /proc/PID/mem and the service's answers must agree with
 * each other and with `list`, and a payload's functions are all patched or
 * all unpatched.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import {
  Reaper, alive, buildStress, cli, computeAnswer, functionState, listJson, show, sleep, startStress, strayStops,
  type CliResult,
} from './helpers/stress.js';
import { buildAll, startBase, type BaseProcess } from './helpers/toolchain.js';
import type { ListEntryJson } from '../src/cli/json-types.js';

let work = '';
let files: Record<string, string>;
const reaper = new Reaper();

before(() => {
  work = mkdtempSync(join(tmpdir(), 'hotstack-live-crash-'));
  process.env.HOTSTACK_STATE_DIR = join(work, 'state');
  files = buildAll();
});

after(() => {
  reaper.killAll();
  if (work) rmSync(work, { recursive: true, force: true });
});

const EXTRA: Record<string, string> = { '-unstable': 'base', 'Two World': 'twofunc', 'Hello Again World!': 'replace' };
const MINOR: Record<string, string> = { '42': 'base', '2': 'twofunc' };

interface Observed {
  /** Who answers extra_version / minor_version: base, twofunc or replace. */
  extra: string;
  minor: string;
  extraBytes: string;
  minorBytes: string;
}

/** The process seen from outside: answers and bytes of both functions. */
async function observe(p: BaseProcess): Promise<Observed> {
  const v = await p.ask('v');
  const m = await p.ask('m');
  const fe = functionState(p.pid, files.base!, 'extra_version');
  const fm = functionState(p.pid, files.base!, 'minor_version');
  const o: Observed = { extra: EXTRA[v] ?? `? (${v})`, minor: MINOR[m] ?? `? (${m})`, extraBytes: fe.state, minorBytes: fm.state };
  assert.notEqual(fe.state, 'torn', `extra_version holds neither its code nor a jump: ${fe.bytes.toString('hex')}`);
  assert.notEqual(fm.state, 'torn', `minor_version holds neither its code nor a jump: ${fm.bytes.toString('hex')}`);
  // Bytes and answers agree.
  assert.equal(o.extraBytes === 'patched', o.extra !== 'base', `extra_version: bytes ${o.extraBytes}, answer ${v}`);
  assert.equal(o.minorBytes === 'patched', o.minor !== 'base', `minor_version: bytes ${o.minorBytes}, answer ${m}`);
  return o;
}

/** What `list` says should answer: the topmost applied payload patching each function. */
function expected(list: ListEntryJson[]): { extra: string; minor: string } {
  const applied = list.filter((x) => x.state === 'APPLIED').map((x) => x.name);
  let extra = 'base';
  let minor = 'base';
  for (const n of applied) {
    if (n === 'twofunc') { extra = 'twofunc'; minor = 'twofunc'; }
    if (n === 'replace') extra = 'replace';
  }
  return { extra, minor };
}

/** The process runs, no thread is left stopped or traced, and list/memory/answers agree. */
async function checkConsistent(p: BaseProcess, what: string): Promise<{ list: ListEntryJson[]; stderr: string; seen: Observed }> {
  assert.ok(alive(p.pid), `${what}: the process is alive`);
  let stray = strayStops(p.pid);
  for (let i = 0; stray.length && i < 50; i++) {
    await sleep(10);
    stray = strayStops(p.pid);
  }
  assert.deepEqual(stray, [], `${what}: no thread left stopped or traced`);
  assert.match(await p.ask('c'), /^\d+$/, `${what}: the process answers`);
  const { list, stderr } = await listJson(p.pid);
  const seen = await observe(p);
  const want = expected(list);
  assert.deepEqual({ extra: seen.extra, minor: seen.minor }, want, `${what}: memory agrees with list ${JSON.stringify(list.map((x) => [x.name, x.state]))}`);
  // twofunc is all or nothing.
  if (list.some((x) => x.name === 'twofunc' && x.state === 'APPLIED') && !list.some((x) => x.name === 'replace' && x.state === 'APPLIED')) {
    assert.deepEqual([seen.extraBytes, seen.minorBytes], ['patched', 'patched'], `${what}: twofunc fully applied`);
  }
  if (!list.some((x) => x.state === 'APPLIED')) {
    assert.deepEqual([seen.extraBytes, seen.minorBytes], ['unpatched', 'unpatched'], `${what}: nothing patched`);
  }
  return { list, stderr, seen };
}

function states(list: ListEntryJson[]): [string, string][] {
  return list.map((x) => [x.name, x.state]);
}

async function hs(p: BaseProcess, args: string[], env?: Record<string, string>): Promise<CliResult> {
  return cli(['--pid', String(p.pid), ...args], { env, timeoutMs: 60_000 });
}

async function ok(p: BaseProcess, args: string[]): Promise<void> {
  const r = await hs(p, args);
  assert.equal(r.code, 0, show(r));
}

interface FaultCase {
  cmd: string;
  writes: number[];
  setup: (p: BaseProcess) => Promise<void>;
  args: () => string[];
  /** The action the journal names, and its payload. */
  action: string;
  payload: string;
  /** States after the repair (the interrupted action undone). */
  repaired: [string, string][];
  /** The same command again, without the fault, and the states it leads to. */
  redo: () => string[];
  done: [string, string][];
}

const CASES: FaultCase[] = [
  {
    cmd: 'load', writes: [1, 2], setup: async () => {}, args: () => ['load', files.twofunc!],
    action: 'apply', payload: 'twofunc', repaired: [['twofunc', 'CHECKED']],
    redo: () => ['apply', 'twofunc'], done: [['twofunc', 'APPLIED']],
  },
  {
    cmd: 'apply', writes: [1, 2], setup: (p) => ok(p, ['upload', 'twofunc', files.twofunc!]), args: () => ['apply', 'twofunc'],
    action: 'apply', payload: 'twofunc', repaired: [['twofunc', 'CHECKED']],
    redo: () => ['apply', 'twofunc'], done: [['twofunc', 'APPLIED']],
  },
  {
    cmd: 'revert', writes: [1, 2], setup: (p) => ok(p, ['load', files.twofunc!]), args: () => ['revert', 'twofunc'],
    action: 'revert', payload: 'twofunc', repaired: [['twofunc', 'APPLIED']],
    redo: () => ['revert', 'twofunc'], done: [['twofunc', 'CHECKED']],
  },
  {
    // replace reverts twofunc (2 writes) then applies replace (1 write): 3 instants.
    cmd: 'replace', writes: [1, 2, 3],
    setup: async (p) => {
      await ok(p, ['load', files.twofunc!]);
      await ok(p, ['upload', 'replace', files.replace!]);
    },
    args: () => ['replace', 'replace'],
    action: 'replace', payload: 'replace', repaired: [['twofunc', 'APPLIED'], ['replace', 'CHECKED']],
    redo: () => ['replace', 'replace'], done: [['replace', 'APPLIED'], ['twofunc', 'CHECKED']],
  },
];

describe('live crash: HOTSTACK_FAULT=after-write:N kills the tool mid-action', () => {
  for (const c of CASES) {
    for (const n of c.writes) {
      it(`${c.cmd}, killed after write ${n}: the next list repairs it, all or nothing`, { timeout: 120_000 }, async () => {
        const p = reaper.add(await startBase(files.base!));
        await c.setup(p);
        const before = await checkConsistent(p, 'before');

        const r = await hs(p, c.args(), { HOTSTACK_FAULT: `after-write:${n}`, HOTSTACK_TEST_MODE: '1' });
        assert.equal(r.signal, 'SIGKILL', `the tool died by its fault: ${show(r)}`);
        assert.doesNotMatch(r.stdout, /completed\n$/, show(r));
        // The process keeps running, in whatever half state the tool left.
        assert.ok(alive(p.pid), 'the process survived the tool');
        assert.match(await p.ask('c'), /^\d+$/, 'the process answers');

        // The next command finds the interrupted action and repairs it.
        const first = await checkConsistent(p, 'after repair');
        assert.match(first.stderr, new RegExp(`repaired an interrupted ${c.action} of ${c.payload}\\b`), `repair notice on stderr: ${JSON.stringify(first.stderr)}`);
        assert.deepEqual(states(first.list), c.repaired);
        assert.ok(first.list.every((x) => x.rc === 0 || x.rc === undefined), `no error left on a payload: ${JSON.stringify(first.list)}`);
        assert.deepEqual(first.seen, before.seen, 'memory is back to what it was before the action');

        // Repaired once: the next command has nothing to repair.
        const second = await checkConsistent(p, 'second list');
        assert.equal(second.stderr, '', 'no second repair');
        assert.deepEqual(states(second.list), c.repaired);

        // And the process is usable: the same action, without the fault, goes through.
        await ok(p, c.redo());
        const last = await checkConsistent(p, 'after redo');
        assert.deepEqual(states(last.list), c.done);
        await p.stop();
      });
    }
  }
});

describe('live crash: a fleet load (upload and apply in one stop) killed midway', () => {
  // A fleet's load puts the upload's last save off until the apply's journal (Engine.together):
  // killed in between, the next command frees the upload; killed after a write, it undoes the apply
  // (the notice counts the journaled writes, both, whether or not they reached memory).
  const cases: { fault: string; action: string; how: RegExp; repaired: [string, string][] }[] = [
    { fault: 'after-upload', action: 'upload', how: /its memory was freed/, repaired: [] },
    { fault: 'after-write:1', action: 'apply', how: /2 write\(s\) undone/, repaired: [['twofunc', 'CHECKED']] },
    { fault: 'after-write:2', action: 'apply', how: /2 write\(s\) undone/, repaired: [['twofunc', 'CHECKED']] },
  ];
  for (const c of cases) {
    it(`HOTSTACK_FAULT=${c.fault}: the next list repairs the process it hit, the other is untouched; the load then goes through`, { timeout: 120_000 }, async () => {
      const ps = [reaper.add(await startBase(files.base!)), reaper.add(await startBase(files.base!))];
      const before: Observed[] = [];
      for (const p of ps) before.push((await checkConsistent(p, `before (${p.pid})`)).seen);
      const pids = ps.map((p) => p.pid).join(',');
      const r = await cli(['--pid', pids, '--jobs', '1', 'load', files.twofunc!], { env: { HOTSTACK_FAULT: c.fault, HOTSTACK_TEST_MODE: '1' }, timeoutMs: 60_000 });
      assert.equal(r.signal, 'SIGKILL', `the tool died by its fault: ${show(r)}`);

      const seen = [];
      for (const p of ps) seen.push(await checkConsistent(p, `after the kill (${p.pid})`));
      const hit = seen.findIndex((x) => /repaired an interrupted/.test(x.stderr));
      assert.ok(hit >= 0, `one process was repaired: ${JSON.stringify(seen.map((x) => x.stderr))}`);
      const other = seen[1 - hit]!;
      assert.match(seen[hit]!.stderr, new RegExp(`repaired an interrupted ${c.action} of twofunc\\b`));
      assert.match(seen[hit]!.stderr, c.how);
      assert.deepEqual(states(seen[hit]!.list), c.repaired);
      assert.deepEqual(seen[hit]!.seen, before[hit], 'memory is back to what it was before the load');
      assert.equal(other.stderr, '', 'the other process had nothing to repair');
      assert.deepEqual(states(other.list), [], 'the other process was not reached');

      // And the same load, without the fault, patches both.
      const again = await cli(['--pid', pids, 'load', files.twofunc!], { timeoutMs: 60_000 });
      assert.equal(again.code, 0, show(again));
      for (const p of ps) assert.deepEqual(states((await checkConsistent(p, `after the load (${p.pid})`)).list), [['twofunc', 'APPLIED']]);
      for (const p of ps) await p.stop();
    });
  }
});

describe('live crash: SIGKILL at random instants', () => {
  it('a loop of 30 apply/revert runs killed at random instants: every state is consistent', { timeout: 600_000 }, async (t) => {
    const p = reaper.add(await startBase(files.base!));
    await ok(p, ['upload', 'twofunc', files.twofunc!]);

    // Calibrate: how long a whole run takes, and how long from the verb on
    // stdout ("Applying twofunc... ", printed just before the action) to the exit.
    const full: number[] = [];
    const action: number[] = [];
    for (const cmd of ['apply', 'revert', 'apply', 'revert']) {
      const r = await cli(['--pid', String(p.pid), cmd, 'twofunc'], { mark: 'ing twofunc... ' });
      assert.equal(r.code, 0, show(r));
      full.push(r.ms);
      action.push(r.ms - (r.markMs ?? 0));
    }
    const fullMs = Math.max(...full);
    const actionMs = Math.max(...action);
    t.diagnostic(`calibration: run ${full.map((x) => x.toFixed(0)).join('/')} ms, action ${action.map((x) => x.toFixed(0)).join('/')} ms`);

    let state: 'CHECKED' | 'APPLIED' = 'CHECKED';
    const tally = { killed: 0, completed: 0, repaired: 0, changed: 0 };
    const byMode = [0, 1, 2].map(() => ({ killed: 0, repaired: 0 }));
    for (let i = 0; i < 30; i++) {
      const cmd: string = state === 'APPLIED' ? 'revert' : 'apply';
      // Three ways to pick the instant, in turn: a random instant of the
      // whole run; a random instant after the verb is printed (during the
      // action itself); the first write to the state directory after the
      // verb (the tool writing down its intent: the window a repair is for).
      const mode = i % 3;
      const opts = mode === 0 ? { killAfterMs: Math.random() * fullMs }
        : mode === 1 ? { killWhen: { text: 'ing twofunc... ', delayMs: Math.random() * actionMs * 1.2 } }
        : { killOnChange: { dir: process.env.HOTSTACK_STATE_DIR!, afterText: 'ing twofunc... ', delayMs: Math.floor(Math.random() * 4) } };
      const r = await cli(['--pid', String(p.pid), cmd, 'twofunc'], { ...opts, timeoutMs: 60_000 });
      if (r.signal === 'SIGKILL') { tally.killed++; byMode[mode]!.killed++; }
      else {
        assert.equal(r.code, 0, `a run that was not killed succeeds: ${show(r)}`);
        tally.completed++;
      }
      const what = `run ${i} (${cmd}, ${r.signal ? `killed after ${r.ms.toFixed(0)} ms` : 'completed'})`;
      const seen = await checkConsistent(p, what);
      if (/repaired an interrupted/.test(seen.stderr)) { tally.repaired++; byMode[mode]!.repaired++; }
      else assert.equal(seen.stderr, '', `${what}: only repair notices on stderr`);
      const tw = seen.list.find((x) => x.name === 'twofunc');
      assert.ok(tw, `${what}: twofunc is still loaded`);
      if (tw.state !== state) tally.changed++;
      if (r.signal === null) assert.equal(tw.state, cmd === 'apply' ? 'APPLIED' : 'CHECKED', `${what}: a completed run did its job`);
      state = tw.state;
    }
    t.diagnostic(`30 runs: ${tally.killed} killed, ${tally.completed} completed, ${tally.repaired} repairs, ${tally.changed} state changes`);
    t.diagnostic(`killed/repaired by instant: whole run ${byMode[0]!.killed}/${byMode[0]!.repaired}, during the action ${byMode[1]!.killed}/${byMode[1]!.repaired}, at the first state write ${byMode[2]!.killed}/${byMode[2]!.repaired}`);
    assert.ok(tally.killed > 0, 'some runs were actually killed');
    await p.stop();
  });

  it('the same with 8 threads calling the patched function: kills land while threads are seized and the check retries', { timeout: 600_000 }, async (t) => {
    const fx = buildStress(join(work, 'stress'));
    const p = reaper.add(await startStress(fx.base));
    const pid = String(p.pid);
    assert.equal(await p.ask('W8'), 'ok 8');
    await ok(p, ['upload', 'stress_v1', fx.v1]);
    const full: number[] = [];
    for (const cmd of ['apply', 'revert']) {
      const r = await cli(['--pid', pid, cmd, 'stress_v1']);
      assert.equal(r.code, 0, show(r));
      full.push(r.ms);
    }
    const fullMs = Math.max(...full);
    let state: 'CHECKED' | 'APPLIED' = 'CHECKED';
    const tally = { killed: 0, repaired: 0 };
    for (let i = 0; i < 20; i++) {
      const cmd: string = state === 'APPLIED' ? 'revert' : 'apply';
      const opts = i % 2 === 0
        ? { killAfterMs: fullMs * (0.3 + 0.7 * Math.random()) }
        : { killOnChange: { dir: process.env.HOTSTACK_STATE_DIR!, afterText: 'ing stress_v1... ', delayMs: Math.floor(Math.random() * 4) } };
      const r = await cli(['--pid', pid, cmd, 'stress_v1'], { ...opts, timeoutMs: 60_000 });
      const what = `run ${i} (${cmd}, ${r.signal ? `killed after ${r.ms.toFixed(0)} ms` : 'completed'})`;
      if (r.signal === 'SIGKILL') tally.killed++;
      else assert.ok(r.code === 0 || r.code === 2, `${what}: completes or EBUSY: ${show(r)}`);
      assert.ok(alive(p.pid), `${what}: the process is alive`);
      let stray = strayStops(p.pid);
      for (let k = 0; stray.length && k < 50; k++) {
        await sleep(10);
        stray = strayStops(p.pid);
      }
      assert.deepEqual(stray, [], `${what}: no thread left stopped or traced`);
      const { list, stderr } = await listJson(p.pid);
      if (/repaired an interrupted/.test(stderr)) tally.repaired++;
      const v1 = list.find((x) => x.name === 'stress_v1');
      assert.ok(v1, `${what}: stress_v1 still loaded`);
      const f = functionState(p.pid, fx.base, 'compute');
      assert.equal(f.state, v1.state === 'APPLIED' ? 'patched' : 'unpatched', `${what}: compute() bytes agree with list (${v1.state})`);
      assert.equal(await p.compute(9), computeAnswer(9, v1.state === 'APPLIED' ? 1 : 0), `${what}: answer agrees with list`);
      const s = await p.status();
      assert.equal(s.bad + s.crashes, 0, `${what}: workers ${JSON.stringify(s)}`);
      state = v1.state;
    }
    const s = await p.status();
    t.diagnostic(`20 runs: ${tally.killed} killed, ${tally.repaired} repairs; workers ${JSON.stringify(s)}`);
    assert.equal(s.threads, 8);
    await p.stop();
  });
});
