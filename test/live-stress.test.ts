/**
 * Stress tests on live multi-threaded processes (process-targets.md:
 * stop the world, the consistency check, the lock).
 *
 * The target is test/fixtures/stress/stress.c, built here with gcc: worker
 * threads call compute() non-stop and check every answer against the
 * versions that may legitimately be live, while payloads patch and unpatch
 * compute() underneath them.  Payloads are built at test time with the
 * toolchain helpers (Xen's recipe), never by hotstack.
 *
 * In-process sessions (openProcessEngine) are synchronous from attach to
 * detach, so Node's own waitpid() on SIGCHLD never sees a ptrace stop of
 * the target (which is our child).
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { HotstackError } from '../src/errors.js';
import type { Engine, ActionCmd } from '../src/core/engine.js';
import { openProcessEngine } from '../src/targets/process/session.js';
import { lockProcess } from '../src/targets/process/lock.js';
import {
  Reaper, alive, buildStress, cli, computeAnswer, functionState, listJson, readMem, runtimeAddress, show, sleep,
  startStress, strayStops, threadsNamed, type StressFixtures, type StressProcess,
} from './helpers/stress.js';
import { functionBytes } from './helpers/toolchain.js';

const WORKERS = 8;
/** apply/revert cycles of the two-payload stack: each cycle is 2 applies and 2 reverts. */
const CYCLES = 100;
/** Iterations of compute()'s idle loop (the stress base's `K` command). */
const COMPUTE_WORK = 16;

let work = '';
let fx: StressFixtures;
const reaper = new Reaper();

before(() => {
  work = mkdtempSync(join(tmpdir(), 'hotstack-live-stress-'));
  process.env.HOTSTACK_STATE_DIR = join(work, 'state');
  fx = buildStress(join(work, 'fixtures'));
});

after(() => {
  reaper.killAll();
  if (work) rmSync(work, { recursive: true, force: true });
});

async function start(): Promise<StressProcess> {
  return reaper.add(await startStress(fx.base));
}

/** Version of compute() the workers and the main thread should see with `stack` applied (bottom first). */
const VERSION: Record<string, number> = { stress_v1: 1, stress_v2: 2 };

function errnoOf(e: unknown): string | undefined {
  return e instanceof HotstackError ? e.errno : undefined;
}

describe('live stress: patching under running threads', () => {
  it(`${WORKERS} threads keep calling compute() while a stack of two payloads is applied and reverted ${CYCLES * 2} times each`, { timeout: 600_000 }, async (t) => {
    const p = await start();
    // 16 turns of compute()'s loop: workers are inside it often enough that
    // patching without the consistency check gives bad results and faults
    // within a few hundred actions (checked by disabling the check), yet a
    // safe moment comes well within the 1 s timeout.
    assert.equal(await p.ask(`K${COMPUTE_WORK}`), `ok ${COMPUTE_WORK}`);
    assert.equal(await p.ask(`W${WORKERS}`), `ok ${WORKERS}`);
    await sleep(100);
    const s0 = await p.status();
    assert.equal(s0.threads, WORKERS);
    assert.ok(s0.min > 0, `every worker runs before we start: ${JSON.stringify(s0)}`);

    openProcessEngine(p.pid, (e) => {
      e.upload('stress_v1', readFileSync(fx.v1));
      e.upload('stress_v2', readFileSync(fx.v2));
    });

    const steps: [string, ActionCmd][] = [
      ['stress_v1', 'APPLY'], ['stress_v2', 'APPLY'], ['stress_v2', 'REVERT'], ['stress_v1', 'REVERT'],
    ];
    const stack: string[] = [];
    let ebusy = 0;
    let actions = 0;
    const busyMessages = new Set<string>();
    const sessionMs: number[] = [];
    for (let cycle = 0; cycle < CYCLES; cycle++) {
      for (const [name, cmd] of steps) {
        // EBUSY (no safe moment within the timeout) is allowed, changes
        // nothing, and is retried; anything else is a failure.
        for (let attempt = 0; ; attempt++) {
          const t0 = performance.now();
          let err: unknown;
          try {
            openProcessEngine(p.pid, (e: Engine) => {
              assert.deepEqual(e.notices, [], 'no repair is ever needed');
              e.action(name, cmd, { timeoutMs: 1000 });
            });
          } catch (e) {
            err = e;
          }
          sessionMs.push(performance.now() - t0);
          if (err === undefined) break;
          if (errnoOf(err) !== 'EBUSY' || attempt >= 20) throw err;
          ebusy++;
          busyMessages.add((err as Error).message.replace(/\d+/g, 'N'));
          // Nothing changed: the answer is still the previous top's.
          const top = stack.length ? VERSION[stack[stack.length - 1]!]! : 0;
          assert.equal(await p.compute(3), computeAnswer(3, top), `after EBUSY on ${cmd} ${name}`);
        }
        actions++;
        if (cmd === 'APPLY') stack.push(name);
        else stack.pop();
        const top = stack.length ? VERSION[stack[stack.length - 1]!]! : 0;
        // The main thread's own call sees the new top at once.
        assert.equal(await p.compute(5 + cycle), computeAnswer(5 + cycle, top), `cycle ${cycle}: after ${cmd} ${name}`);
      }
      if (cycle % 25 === 24) {
        const s = await p.status();
        assert.equal(s.bad, 0, `bad results by cycle ${cycle}: ${JSON.stringify(s)}`);
        assert.equal(s.crashes, 0, `crashes by cycle ${cycle}: ${JSON.stringify(s)}`);
      }
    }
    await sleep(200);
    const s = await p.status();
    t.diagnostic(`actions ${actions}, EBUSY retries ${ebusy}${busyMessages.size ? ` (${[...busyMessages].slice(0, 3).join(' | ')})` : ''}`);
    t.diagnostic(`session ms: median ${sessionMs.sort((a, b) => a - b)[sessionMs.length >> 1]!.toFixed(1)}, max ${sessionMs[sessionMs.length - 1]!.toFixed(1)}`);
    t.diagnostic(`workers: ${JSON.stringify(s)}`);

    assert.ok(alive(p.pid), 'the process is alive');
    assert.equal(await p.ask('p'), 'pong', 'the process still answers');
    assert.equal(s.threads, WORKERS);
    assert.equal(s.crashes, 0, 'no worker faulted');
    assert.equal(s.bad, 0, `no bad result (last bad answer: ${s.lastbad})`);
    assert.ok(s.min > s0.min, 'every worker kept making progress');
    assert.ok(s.seen[1]! > 0 && s.seen[2]! > 0, `workers saw both patched versions: ${JSON.stringify(s.seen)}`);
    assert.equal(s.seen[3], 0);
    assert.deepEqual(strayStops(p.pid), [], 'no thread left stopped or traced');

    // State: both payloads checked, nothing patched, bytes as in the file.
    const { list, stderr } = await listJson(p.pid);
    assert.equal(stderr, '');
    assert.deepEqual(list.map((x) => [x.name, x.state, x.rc]), [['stress_v1', 'CHECKED', 0], ['stress_v2', 'CHECKED', 0]]);
    assert.equal(functionState(p.pid, fx.base, 'compute').state, 'unpatched');
    assert.equal(await p.compute(7), computeAnswer(7, 0));

    assert.equal(await p.ask('x'), 'ok');
    openProcessEngine(p.pid, (e) => {
      e.action('stress_v2', 'UNLOAD');
      e.action('stress_v1', 'UNLOAD');
    });
    const r = await cli(['--pid', String(p.pid), 'list']);
    assert.equal(r.code, 0, show(r));
    assert.equal(r.stdout, 'Nothing to list\n');
    await p.stop();
  });
});

describe('live stress: functions that are never safe to patch', () => {
  it('a thread looping inside spin(): apply fails with EBUSY within the timeout, names thread and function, changes nothing', { timeout: 120_000 }, async (t) => {
    const p = await start();
    const pid = String(p.pid);
    assert.equal(await p.ask('S'), 'ok');
    const [spinner] = threadsNamed(p.pid, 'spinner');
    assert.ok(spinner, 'the spinner thread exists');

    const up = await cli(['--pid', pid, 'upload', 'stress_spin', fx.spin]);
    assert.equal(up.code, 0, show(up));
    const at = runtimeAddress(p.pid, fx.base, 'spin');
    const size = 16;
    const before = readMem(p.pid, at, size);
    assert.deepEqual(before, functionBytes(fx.base, 'spin', size), 'spin() is as in the file');

    const r = await cli(['--pid', pid, 'apply', 'stress_spin', '--timeout', '300'], { timeoutMs: 30_000 });
    t.diagnostic(`apply --timeout 300 -> exit ${r.code} after ${r.ms.toFixed(0)} ms: ${r.stderr.trim()}`);
    assert.equal(r.code, 2, `EBUSY exits with 2: ${show(r)}`);
    assert.ok(r.ms < 5000, `returns well within 5 s, not hangs: ${r.ms.toFixed(0)} ms`);
    assert.match(r.stdout, /^Applying stress_spin\.\.\. failed\n$/);
    assert.match(r.stderr, /Error 16: EBUSY/);
    assert.match(r.stderr, new RegExp(`thread ${spinner}\\b`), 'names the thread by id');
    assert.match(r.stderr, /spinner/, 'names the thread by name');
    assert.match(r.stderr, /\bspin\b/, 'names the function');

    // Nothing changed.
    assert.deepEqual(readMem(p.pid, at, size), before, 'spin() bytes unchanged');
    const { list } = await listJson(p.pid);
    assert.equal(list.length, 1);
    assert.equal(list[0]!.name, 'stress_spin');
    assert.equal(list[0]!.state, 'CHECKED');
    assert.equal(list[0]!.errno, 'EBUSY', 'rc records the EBUSY (Xen: data->rc)');
    assert.deepEqual(strayStops(p.pid), []);
    assert.equal(await p.ask('p'), 'pong', 'the process keeps running');
    const states = threadsNamed(p.pid, 'spinner');
    assert.deepEqual(states, [spinner], 'the spinner still runs');

    // Once the thread has left spin(), the same apply goes through.
    const stopped = await p.ask('T');
    assert.match(stopped, /^ok [1-9]\d*$/, 'the spinner kept spinning all along');
    const ok = await cli(['--pid', pid, 'apply', 'stress_spin', '--timeout', '300']);
    assert.equal(ok.code, 0, show(ok));
    assert.equal(functionState(p.pid, fx.base, 'spin').state, 'patched');
    const rev = await cli(['--pid', pid, 'revert', 'stress_spin']);
    assert.equal(rev.code, 0, show(rev));
    assert.deepEqual(readMem(p.pid, at, size), before);
    await p.stop();
  });

  it('a thread blocked in a syscall called from blocker(): EBUSY naming the return address on its stack', { timeout: 120_000 }, async (t) => {
    const p = await start();
    const pid = String(p.pid);
    assert.equal(await p.ask('B'), 'ok');
    const [blocker] = threadsNamed(p.pid, 'blocker');
    assert.ok(blocker, 'the blocker thread exists');

    const up = await cli(['--pid', pid, 'upload', 'stress_block', fx.block]);
    assert.equal(up.code, 0, show(up));
    const at = runtimeAddress(p.pid, fx.base, 'blocker');
    const before = readMem(p.pid, at, 16);

    const r = await cli(['--pid', pid, 'apply', 'stress_block', '--timeout', '300'], { timeoutMs: 30_000 });
    t.diagnostic(`apply --timeout 300 -> exit ${r.code} after ${r.ms.toFixed(0)} ms: ${r.stderr.trim()}`);
    assert.equal(r.code, 2, show(r));
    assert.ok(r.ms < 5000, `returns well within 5 s: ${r.ms.toFixed(0)} ms`);
    assert.match(r.stderr, /Error 16: EBUSY/);
    assert.match(r.stderr, /return address/, 'says why: a return address on the stack');
    assert.match(r.stderr, /\bblocker\b.*\bblocker\b/s, 'names the thread (blocker) and the function (blocker)');
    assert.match(r.stderr, new RegExp(`thread ${blocker}\\b`));
    assert.deepEqual(readMem(p.pid, at, 16), before, 'blocker() bytes unchanged');
    const { list } = await listJson(p.pid);
    assert.deepEqual(list.map((x) => [x.name, x.state]), [['stress_block', 'CHECKED']]);
    assert.deepEqual(strayStops(p.pid), []);

    // The blocked read() survived being interrupted by the stops: released, it returns 1 byte (1 + 1 + 1000).
    assert.equal(await p.ask('R'), 'ok 1002');
    const ok = await cli(['--pid', pid, 'apply', 'stress_block', '--timeout', '300']);
    assert.equal(ok.code, 0, show(ok));
    await p.stop();
  });

  it('in-process: the EBUSY of the engine is a HotstackError and the quiesce gives up at the timeout', { timeout: 60_000 }, async () => {
    const p = await start();
    assert.equal(await p.ask('S'), 'ok');
    openProcessEngine(p.pid, (e) => e.upload('stress_spin', readFileSync(fx.spin)));
    const t0 = performance.now();
    let err: unknown;
    openProcessEngine(p.pid, (e) => {
      try {
        e.action('stress_spin', 'APPLY', { timeoutMs: 200 });
      } catch (x) {
        err = x;
      }
    });
    const ms = performance.now() - t0;
    assert.equal(errnoOf(err), 'EBUSY', String(err));
    assert.match((err as Error).message, /spinner/);
    assert.ok(ms >= 190 && ms < 3000, `gives up after about the timeout (200 ms): ${ms.toFixed(0)} ms`);
    assert.equal(functionState(p.pid, fx.base, 'spin').state, 'unpatched');
    assert.equal(await p.ask('T').then((l) => /^ok \d+$/.test(l)), true);
    await p.stop();
  });
});

describe('live stress: two hotstack runs on one process', () => {
  it('concurrent loads and lists never interleave: each completes (in some order) or gets EBUSY', { timeout: 300_000 }, async (t) => {
    const p = await start();
    const pid = String(p.pid);
    assert.equal(await p.ask('W4'), 'ok 4');
    const outcomes: string[] = [];
    for (let round = 0; round < 4; round++) {
      const runs = await Promise.all([
        cli(['--pid', pid, 'load', fx.v1, '--nodeps']),
        cli(['--pid', pid, 'list', '--json']),
        cli(['--pid', pid, 'load', fx.v2, '--nodeps']),
        cli(['--pid', pid, 'list', '--json']),
      ]);
      for (const r of runs) {
        assert.ok(r.code === 0 || r.code === 2, `completes or EBUSY: ${show(r)}`);
        if (r.code === 2) assert.match(r.stderr, /EBUSY/, show(r));
        assert.doesNotMatch(r.stderr, /repaired/, `no run saw another's half-done action: ${show(r)}`);
        assert.doesNotMatch(r.stderr, /\n\s+at /, `no stack trace: ${show(r)}`);
      }
      for (const r of [runs[1]!, runs[3]!]) {
        if (r.code === 0) JSON.parse(r.stdout); // a list is always a whole, valid state
      }
      const loaded = [runs[0]!, runs[2]!].filter((r) => r.code === 0).map((r) => (r.cmd.includes('stress_v1') ? 'stress_v1' : 'stress_v2'));
      outcomes.push(`${loaded.length} loaded (${runs.map((r) => r.code).join(',')})`);
      const { list, stderr } = await listJson(p.pid);
      assert.equal(stderr, '');
      assert.deepEqual(list.map((x) => x.name).sort(), [...loaded].sort(), 'exactly the loads that succeeded are there');
      assert.ok(list.every((x) => x.state === 'APPLIED' && x.rc === 0), JSON.stringify(list));
      // The top of the stack (last in the list) is what answers.
      const top = list.length ? VERSION[list[list.length - 1]!.name]! : 0;
      assert.equal(await p.compute(11), computeAnswer(11, top));
      const f = functionState(p.pid, fx.base, 'compute');
      assert.equal(f.state, list.length ? 'patched' : 'unpatched');
      // Unwind for the next round.
      for (const x of [...list].reverse()) {
        const rv = await cli(['--pid', pid, 'revert', x.name]);
        assert.equal(rv.code, 0, show(rv));
        const ul = await cli(['--pid', pid, 'unload', x.name]);
        assert.equal(ul.code, 0, show(ul));
      }
      assert.equal(functionState(p.pid, fx.base, 'compute').state, 'unpatched');
    }
    t.diagnostic(outcomes.join('; '));
    const s = await p.status();
    assert.equal(s.bad + s.crashes, 0, JSON.stringify(s));
    await p.stop();
  });

  it('a second run waits for the lock while it is held, and gets EBUSY (exit 2) when it is held too long', { timeout: 60_000 }, async () => {
    const p = await start();
    const pid = String(p.pid);
    // Hold the process's lock as another hotstack would.
    let lock = lockProcess(p.pid, 1000);
    const waiting = cli(['--pid', pid, 'load', fx.v1]);
    await sleep(800);
    assert.equal(functionState(p.pid, fx.base, 'compute').state, 'unpatched', 'nothing happens while we hold the lock');
    lock.release();
    const r = await waiting;
    assert.equal(r.code, 0, `waited for the lock, then completed: ${show(r)}`);
    assert.ok(r.ms >= 700, `it did wait (${r.ms.toFixed(0)} ms)`);
    assert.equal(await p.compute(1), computeAnswer(1, 1));

    lock = lockProcess(p.pid, 1000);
    try {
      const r2 = await cli(['--pid', pid, 'revert', 'stress_v1'], { timeoutMs: 30_000 });
      assert.equal(r2.code, 2, `EBUSY while another hotstack holds the process: ${show(r2)}`);
      assert.match(r2.stderr, /EBUSY/);
      assert.match(r2.stderr, /another hotstack/);
    } finally {
      lock.release();
    }
    assert.equal(await p.compute(1), computeAnswer(1, 1), 'the refused revert changed nothing');
    const r3 = await cli(['--pid', pid, 'revert', 'stress_v1']);
    assert.equal(r3.code, 0, show(r3));
    assert.equal(await p.compute(1), computeAnswer(1, 0));
    await p.stop();
  });
});
