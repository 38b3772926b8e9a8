/**
 * The conformance sequence of scenarios.md (steps 1-16), on live processes,
 * through the real command line (`bin/hotstack --pid PID ...`), for the
 * three bases: plain PIE, -fcf-protection (endbr64: the jump goes after
 * it) and non-PIE (load bias 0).
 *
 * Each group of steps that shares state runs on a fresh base process; every
 * command is a separate CLI invocation, so the state also has to survive
 * the tool exiting.  Checked after each step: exit status, stdout/stderr in
 * xen-livepatch's words (actions.md, "Command-line behaviour"), `list` and
 * `list --json`, and what the service answers (v extra_version, m
 * minor_version, h base_hook_state written by the fixtures' hooks).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { buildAll, functionBytes, readBuildId, type BaseProcess } from './helpers/toolchain.js';
import {
  Cli, Processes, expectCli, freshStateDir, quote, readMemory, runtimeAddress, type CliResult,
} from './helpers/live.js';

let files: Record<string, string> = {};
const stateDir = freshStateDir('scenarios');
const cli = new Cli(stateDir);
const procs = new Processes();

before(() => {
  files = buildAll();
});

after(async () => {
  await procs.stopAll();
  rmSync(stateDir, { recursive: true, force: true });
});

const ERR = {
  ENOENT: 'Error 2: ENOENT: ',
  EEXIST: 'Error 17: EEXIST: ',
  EINVAL: 'Error 22: EINVAL: ',
  EBUSY: 'Error 16: EBUSY: ',
  EOPNOTSUPP: 'Error 95: EOPNOTSUPP: ',
};

/**
 * The list table of actions.md: header, rule, one row per payload, plus
 * hotstack's last column, the base object's file name (`base` for every
 * fixture variant: files cet/base, nopie/base, ...), lined up.
 */
function assertTable(r: CliResult, rows: { name: string; state: string; rc?: RegExp; meta?: string; base?: string }[], step: string): void {
  expectCli(r, { status: 0, stderr: '' }, step);
  if (!rows.length) {
    assert.equal(r.stdout, 'Nothing to list\n', `${step}: list of an empty target`);
    return;
  }
  const lines = r.stdout.replace(/\n$/, '').split('\n');
  assert.match(lines[0] ?? '', /^ ID\s+\|\s*status\s+\|\s*metadata\s+\| base$/, `${step}: header\n${r.stdout}`);
  assert.match(lines[1] ?? '', /^-+\+-+\+-+\+-+$/, `${step}: rule\n${r.stdout}`);
  assert.equal(lines.length - 2, rows.length, `${step}: ${rows.length} rows expected\n${r.stdout}`);
  const column = lines[0]!.lastIndexOf('|');
  assert.equal(lines[1]!.lastIndexOf('+'), column, `${step}: the rule marks the base column\n${r.stdout}`);
  rows.forEach((row, i) => {
    const line = lines[i + 2]!;
    // name padded to 40 columns, "| ", state, optional " (errno, message)", "    | ", metadata, padding, " | ", base file name
    const rc = row.rc ? ` \\(${row.rc.source}\\)` : '';
    const re = new RegExp(`^${quote(row.name.padEnd(40))}\\| ${row.state}${rc}    \\| ${quote(row.meta ?? '')} *\\| ${quote(row.base ?? 'base')}$`);
    assert.match(line, re, `${step}: row ${i + 1} of the list\n${r.stdout}`);
    // xen-livepatch's status cell is not padded: only rows without an rc line up.
    if (!row.rc) assert.equal(line.lastIndexOf('|'), column, `${step}: row ${i + 1}: the base column lines up with the header\n${r.stdout}`);
  });
}

for (const [label, prefix] of [['plain PIE', ''], ['cet (-fcf-protection)', 'cet/'], ['non-PIE', 'nopie/']] as const) {
  describe(`scenarios on a live ${label} base`, () => {
    const f = (k: string): string => {
      const p = files[prefix + k];
      if (!p) throw new Error(`no fixture ${prefix + k}`);
      return p;
    };
    const bid = (k: string): string => readBuildId(f(k));

    /** One running base and the commands of one group of steps. */
    async function session(): Promise<{
      b: BaseProcess;
      hs(...args: string[]): CliResult;
      ask(cmd: string): Promise<string>;
      upload(name: string, key: string, step: string): void;
      load(key: string, step: string): void;
      act(verb: 'apply' | 'revert' | 'unload' | 'replace', name: string, step: string, extra?: string[]): void;
      states(): string[];
      answers(want: { v?: string; m?: string; h?: string }, step: string): Promise<void>;
    }> {
      const b = await procs.start(f('base'));
      const hs = (...args: string[]) => cli.run(b.pid, ...args);
      const verbs = { apply: 'Applying', revert: 'Reverting', unload: 'Unloading', replace: 'Replacing all live patches with' };
      return {
        b,
        hs,
        ask: (cmd) => b.ask(cmd),
        upload(name, key, step) {
          expectCli(hs('upload', name, f(key)), { status: 0, stdout: `Uploading ${f(key)}... completed\n`, stderr: '' }, step);
        },
        load(key, step) {
          expectCli(hs('load', f(key)), {
            status: 0, stdout: `Uploading ${f(key)}... completed\nApplying ${key}... completed\n`, stderr: '',
          }, step);
        },
        act(verb, name, step, extra = []) {
          expectCli(hs(verb, name, ...extra), { status: 0, stdout: `${verbs[verb]} ${name}... completed\n`, stderr: '' }, step);
        },
        states: () => cli.states(b.pid),
        async answers(want, step) {
          if (want.v !== undefined) assert.equal(await b.ask('v'), want.v, `${step}: extra_version`);
          if (want.m !== undefined) assert.equal(await b.ask('m'), want.m, `${step}: minor_version`);
          if (want.h !== undefined) assert.equal(await b.ask('h'), want.h, `${step}: base_hook_state`);
        },
      };
    }

    test('steps 1-3: empty list, load hello (hooks 101), EEXIST, revert (112), unload, unknown name', async () => {
      const s = await session();
      // 1
      assertTable(s.hs('list'), [], 'step 1');
      expectCli(s.hs('list', '--json'), { status: 0, stdout: '[]\n', stderr: '' }, 'step 1 json');
      expectCli(s.hs('revert', 'hello'), { status: 1, stdout: '', stderr: /hello.*\n?.*Error 2: ENOENT: / }, 'step 1 revert unknown');
      await s.answers({ v: '-unstable', m: '42', h: '0' }, 'step 1');

      // 2
      const before = functionBytes(f('base'), 'extra_version', 9);
      s.load('hello', 'step 2');
      await s.answers({ v: 'Hello World', m: '42', h: '101' }, 'step 2');
      assertTable(s.hs('list'), [{ name: 'hello', state: 'APPLIED', meta: 'fixture=hello' }], 'step 2');
      const list = cli.list(s.b.pid);
      assert.equal(list.length, 1);
      assert.deepEqual(
        { ...list[0], base: undefined },
        {
          name: 'hello', state: 'APPLIED', rc: 0, errno: null, buildId: bid('hello'), depends: bid('base'),
          base: undefined, metadata: ['fixture=hello'],
          // base.c's patched functions are noipa: nothing relies on their registers, no veneer.
          hazards: [], veneers: [],
        },
        'step 2: list --json',
      );
      assert.equal(list[0]!.base.buildId, bid('base'), 'step 2: base build-id');
      assert.equal(list[0]!.base.path, f('base'), 'step 2: base path');
      // The jump: e9 at the start, or right after the endbr64 of a CET base.
      const at = runtimeAddress(s.b.pid, f('base'), 'extra_version');
      const live = readMemory(s.b.pid, at, 9);
      const endbr = before.subarray(0, 4).equals(Buffer.from([0xf3, 0x0f, 0x1e, 0xfa]));
      assert.equal(endbr, prefix === 'cet/', `the ${label} base ${endbr ? 'has' : 'lacks'} endbr64 in extra_version`);
      const off = endbr ? 4 : 0;
      assert.equal(live[off], 0xe9, `step 2: jmp expected at extra_version+${off}: ${live.toString('hex')}`);
      assert.deepEqual(live.subarray(0, off), before.subarray(0, off), 'step 2: endbr64 left in place');
      assert.deepEqual(live.subarray(off + 5), before.subarray(off + 5), 'step 2: nothing written past the jump');

      expectCli(s.hs('load', f('hello')), {
        status: 1, stdout: `Uploading ${f('hello')}... failed\n`, stderr: new RegExp(`^${ERR.EEXIST}.*hello`),
      }, 'step 2 load again');
      assert.deepEqual(s.states(), ['hello:APPLIED'], 'step 2: the second load changed nothing');
      await s.answers({ v: 'Hello World', h: '101' }, 'step 2 after EEXIST');

      // 3
      s.act('revert', 'hello', 'step 3');
      await s.answers({ v: '-unstable', m: '42', h: '112' }, 'step 3');
      assert.deepEqual(readMemory(s.b.pid, at, 9), before, 'step 3: the original code is back');
      assertTable(s.hs('list'), [{ name: 'hello', state: 'CHECKED', meta: 'fixture=hello' }], 'step 3');
      s.act('unload', 'hello', 'step 3');
      expectCli(s.hs('unload', 'hello'), { status: 1, stdout: '', stderr: /hello.*\n?.*Error 2: ENOENT: / }, 'step 3 unload again');
      assertTable(s.hs('list'), [], 'step 3');
      await s.answers({ v: '-unstable', h: '112' }, 'step 3 end');
      await s.b.stop();
    });

    test('steps 4-9: hello+bye, REPLACE, re-apply refused, wrong dependency, No action needed, clean up', async () => {
      const s = await session();
      // 4
      s.load('hello', 'step 4');
      s.load('bye', 'step 4');
      await s.answers({ v: 'Bye World!', h: '101' }, 'step 4');
      assertTable(s.hs('list'), [
        { name: 'hello', state: 'APPLIED', meta: 'fixture=hello' }, { name: 'bye', state: 'APPLIED' },
      ], 'step 4');
      const l4 = cli.list(s.b.pid);
      assert.equal(l4[1]!.depends, bid('hello'), 'step 4: bye depends on hello');

      // 5
      s.upload('replace', 'replace', 'step 5');
      assert.deepEqual(s.states(), ['hello:APPLIED', 'bye:APPLIED', 'replace:CHECKED'], 'step 5 before replace');
      s.act('replace', 'replace', 'step 5');
      // hello's unload hooks ran when it was reverted under the replace.
      await s.answers({ v: 'Hello Again World!', h: '112' }, 'step 5');
      assert.deepEqual(s.states(), ['replace:APPLIED', 'hello:CHECKED', 'bye:CHECKED'], 'step 5: stack is [replace]');
      assertTable(s.hs('list'), [
        { name: 'replace', state: 'APPLIED' }, { name: 'hello', state: 'CHECKED', meta: 'fixture=hello' }, { name: 'bye', state: 'CHECKED' },
      ], 'step 5');

      // 6
      expectCli(s.hs('apply', 'hello'), {
        status: 1, stdout: 'Applying hello... failed\n', stderr: new RegExp(`^${ERR.EINVAL}.*hello`),
      }, 'step 6');
      // 7
      expectCli(s.hs('apply', 'bye'), {
        status: 1, stdout: 'Applying bye... failed\n',
        stderr: new RegExp(`^${ERR.EINVAL}.*(replace|${bid('replace')})`),
      }, 'step 7: bye checked against replace, the top');
      await s.answers({ v: 'Hello Again World!', h: '112' }, 'steps 6-7 changed nothing');
      assert.deepEqual(s.states(), ['replace:APPLIED', 'hello:CHECKED', 'bye:CHECKED'], 'steps 6-7 changed nothing');

      // 8
      expectCli(s.hs('apply', 'replace'), { status: 0, stdout: 'No action needed.\n', stderr: '' }, 'step 8');

      // 9
      s.act('revert', 'replace', 'step 9');
      await s.answers({ v: '-unstable' }, 'step 9');
      for (const n of ['replace', 'hello', 'bye']) s.act('unload', n, 'step 9');
      assertTable(s.hs('list'), [], 'step 9');
      expectCli(s.hs('list', '--json'), { status: 0, stdout: '[]\n', stderr: '' }, 'step 9 json');
      await s.answers({ v: '-unstable', m: '42' }, 'step 9 end');
      await s.b.stop();
    });

    test('steps 10-11: nop re-applied after revert; unload while applied is the wrong state', async () => {
      const s = await session();
      // 10
      s.load('nop', 'step 10');
      await s.answers({ m: '43', v: '-unstable' }, 'step 10 load');
      s.act('revert', 'nop', 'step 10');
      await s.answers({ m: '42' }, 'step 10 revert');
      s.act('apply', 'nop', 'step 10');
      await s.answers({ m: '43' }, 'step 10 apply again');
      // 11
      expectCli(s.hs('unload', 'nop'), {
        status: 1, stdout: '', stderr: /^nop is in the wrong state\.\n(.*\n)*.*APPLIED(.*\n)*.*CHECKED/,
      }, 'step 11');
      assert.deepEqual(s.states(), ['nop:APPLIED'], 'step 11 changed nothing');
      await s.answers({ m: '43' }, 'step 11 unload refused');
      s.act('revert', 'nop', 'step 11');
      s.act('unload', 'nop', 'step 11');
      assertTable(s.hs('list'), [], 'step 11');
      await s.answers({ m: '42' }, 'step 11 end');
      await s.b.stop();
    });

    test('steps 12-13: bye on the bare base EINVAL, --nodeps; revert below the top EBUSY exit 2', async () => {
      const s = await session();
      // 12
      expectCli(s.hs('load', f('bye')), {
        status: 1,
        stdout: `Uploading ${f('bye')}... completed\nApplying bye... failed\n`,
        stderr: new RegExp(`^${ERR.EINVAL}.*${bid('base')}`),
      }, 'step 12: load bye checked against the base');
      assertTable(s.hs('list'), [], 'step 12: load unloaded it again');
      await s.answers({ v: '-unstable' }, 'step 12');
      s.upload('bye', 'bye', 'step 12');
      s.act('apply', 'bye', 'step 12 --nodeps', ['--nodeps']);
      await s.answers({ v: 'Bye World!' }, 'step 12 --nodeps');
      s.act('revert', 'bye', 'step 12 cleanup');
      s.act('unload', 'bye', 'step 12 cleanup');

      // 13
      s.load('hello', 'step 13');
      s.load('bye', 'step 13');
      expectCli(s.hs('revert', 'hello'), {
        status: 2, stdout: 'Reverting hello... failed\n', stderr: new RegExp(`^${ERR.EBUSY}.*bye`),
      }, 'step 13');
      assert.deepEqual(s.states(), ['hello:APPLIED', 'bye:APPLIED'], 'step 13 changed nothing');
      await s.answers({ v: 'Bye World!', h: '101' }, 'step 13');
      s.act('revert', 'bye', 'step 13 cleanup');
      await s.answers({ v: 'Hello World' }, 'step 13 bye reverted');
      s.act('revert', 'hello', 'step 13 cleanup');
      s.act('unload', 'bye', 'step 13 cleanup');
      s.act('unload', 'hello', 'step 13 cleanup');
      assertTable(s.hs('list'), [], 'step 13 end');
      await s.answers({ v: '-unstable', h: '112' }, 'step 13 end');
      await s.b.stop();
    });

    test('steps 14-15: no_base_id EINVAL leaves nothing; expect applies, expect_fail EINVAL changes nothing', async () => {
      const s = await session();
      // 14
      expectCli(s.hs('upload', 'no_base_id', f('no_base_id')), {
        status: 1, stdout: `Uploading ${f('no_base_id')}... failed\n`, stderr: new RegExp(`^${ERR.EINVAL}.*xen_depends`),
      }, 'step 14');
      assertTable(s.hs('list'), [], 'step 14');
      expectCli(s.hs('load', f('no_base_id')), {
        status: 1, stdout: `Uploading ${f('no_base_id')}... failed\n`, stderr: new RegExp(`^${ERR.EINVAL}`),
      }, 'step 14 load');
      assertTable(s.hs('list'), [], 'step 14 load');

      // 15
      s.load('expect', 'step 15');
      await s.answers({ v: 'Expected World' }, 'step 15');
      s.act('revert', 'expect', 'step 15');
      s.act('unload', 'expect', 'step 15');
      const at = runtimeAddress(s.b.pid, f('base'), 'extra_version');
      const code = readMemory(s.b.pid, at, 16);
      expectCli(s.hs('load', f('expect_fail')), {
        status: 1,
        stdout: `Uploading ${f('expect_fail')}... completed\nApplying expect_fail... failed\n`,
        stderr: new RegExp(`^${ERR.EINVAL}.*extra_version`),
      }, 'step 15 expect_fail');
      assertTable(s.hs('list'), [], 'step 15: expect_fail unloaded again');
      assert.deepEqual(readMemory(s.b.pid, at, 16), code, 'step 15: expect_fail wrote nothing');
      await s.answers({ v: '-unstable' }, 'step 15 end');
      // Also with expect applied below: still EINVAL, still nothing changed.
      s.load('expect', 'step 15 again');
      s.upload('expect_fail', 'expect_fail', 'step 15 again');
      expectCli(s.hs('apply', 'expect_fail', '--nodeps'), {
        status: 1, stdout: 'Applying expect_fail... failed\n', stderr: new RegExp(`^${ERR.EINVAL}.*extra_version`),
      }, 'step 15 expect_fail on top of expect (--nodeps)');
      assert.deepEqual(s.states(), ['expect:APPLIED', 'expect_fail:CHECKED'], 'step 15 again');
      await s.answers({ v: 'Expected World' }, 'step 15 again');
      s.act('unload', 'expect_fail', 'step 15 cleanup');
      s.act('revert', 'expect', 'step 15 cleanup');
      s.act('unload', 'expect', 'step 15 cleanup');
      await s.b.stop();
    });

    test('step 16: prepost hook counts, vetoed revert (rc in list), REPLACE refused EOPNOTSUPP', async () => {
      const s = await session();
      s.load('prepost', 'step 16');
      await s.answers({ v: 'Hello World', h: '1100' }, 'step 16 applied');
      s.upload('replace', 'replace', 'step 16');
      expectCli(s.hs('replace', 'replace'), {
        status: 1, stdout: 'Replacing all live patches with replace... failed\n', stderr: new RegExp(`^${ERR.EOPNOTSUPP}.*prepost`),
      }, 'step 16 REPLACE with prepost applied');
      assert.deepEqual(s.states(), ['prepost:APPLIED', 'replace:CHECKED'], 'step 16: REPLACE changed nothing');
      await s.answers({ v: 'Hello World', h: '1100' }, 'step 16 after refused REPLACE');

      // First revert: vetoed by the pre-revert hook with -EBUSY (exit 2); the post hook does not run.
      expectCli(s.hs('revert', 'prepost'), {
        status: 2, stdout: 'Reverting prepost... failed\n', stderr: new RegExp(`^${ERR.EBUSY}.*prepost`),
      }, 'step 16 vetoed revert');
      await s.answers({ v: 'Hello World', h: '1110' }, 'step 16 vetoed revert');
      assert.deepEqual(s.states(), ['prepost:APPLIED', 'replace:CHECKED'], 'step 16 vetoed revert changed nothing');
      // Second revert succeeds.
      s.act('revert', 'prepost', 'step 16 second revert');
      await s.answers({ v: '-unstable', h: '1121' }, 'step 16 reverted');
      assert.equal(cli.list(s.b.pid).find((p) => p.name === 'prepost')!.rc, 0, 'step 16: rc is 0 after a successful revert');
      // REPLACE looks at the candidate and the applied payloads only: with prepost merely CHECKED it works.
      s.act('replace', 'replace', 'step 16 replace after prepost reverted');
      await s.answers({ v: 'Hello Again World!', h: '1121' }, 'step 16 replace');
      s.act('revert', 'replace', 'step 16 cleanup');
      s.act('unload', 'replace', 'step 16 cleanup');
      s.act('unload', 'prepost', 'step 16 cleanup');
      assertTable(s.hs('list'), [], 'step 16 end');

      // prepost_fail: the pre-apply hook returns -EINVAL: nothing changes, no other hook runs.
      expectCli(s.hs('load', f('prepost_fail')), {
        status: 1,
        stdout: `Uploading ${f('prepost_fail')}... completed\nApplying prepost_fail... failed\n`,
        stderr: new RegExp(`^${ERR.EINVAL}.*prepost_fail`),
      }, 'prepost_fail');
      await s.answers({ v: '-unstable', h: '1' }, 'prepost_fail');
      assertTable(s.hs('list'), [], 'prepost_fail unloaded again');
      await s.b.stop();
    });

    test('a vetoing pre hook\'s return value becomes the payload\'s rc (list and list --json)', async () => {
      const s = await session();
      s.load('prepost', 'rc');
      expectCli(s.hs('revert', 'prepost'), {
        status: 2, stdout: 'Reverting prepost... failed\n', stderr: new RegExp(`^${ERR.EBUSY}.*prepost`),
      }, 'vetoed revert');
      s.upload('prepost_fail', 'prepost_fail', 'rc');
      expectCli(s.hs('apply', 'prepost_fail', '--nodeps'), {
        status: 1, stdout: 'Applying prepost_fail... failed\n', stderr: new RegExp(`^${ERR.EINVAL}.*prepost_fail`),
      }, 'vetoed apply');
      await s.answers({ v: 'Hello World', h: '1' }, 'after both vetoes');
      // actions.md: "the pre-apply hook may veto (its return value becomes rc)"; the same for pre-revert.
      const rcs = cli.list(s.b.pid).map((p) => ({ name: p.name, state: p.state, rc: p.rc, errno: p.errno }));
      assert.deepEqual(rcs, [
        { name: 'prepost', state: 'APPLIED', rc: -16, errno: 'EBUSY' },
        { name: 'prepost_fail', state: 'CHECKED', rc: -22, errno: 'EINVAL' },
      ], 'rc of the vetoed actions in list --json');
      assertTable(s.hs('list'), [
        { name: 'prepost', state: 'APPLIED', rc: /(EBUSY|-?16), Device or resource busy/ },
        { name: 'prepost_fail', state: 'CHECKED', rc: /(EINVAL|-?22), Invalid argument/ },
      ], 'list shows the rc');
      await s.b.stop();
    });

    test('action hooks replace the built-in apply/revert; nofunc (hooks only) is valid', async () => {
      const s = await session();
      s.load('action', 'action');
      await s.answers({ v: '-unstable', h: '10' }, 'action applied (hook did not patch)');
      assert.deepEqual(s.states(), ['action:APPLIED'], 'action');
      s.act('revert', 'action', 'action');
      await s.answers({ v: '-unstable', h: '11' }, 'action reverted');
      s.act('unload', 'action', 'action');

      s.load('nofunc', 'nofunc');
      await s.answers({ v: '-unstable', m: '42', h: '2100' }, 'nofunc applied');
      s.act('revert', 'nofunc', 'nofunc');
      await s.answers({ h: '2110' }, 'nofunc reverted');
      s.act('unload', 'nofunc', 'nofunc');
      assertTable(s.hs('list'), [], 'end');
      await s.b.stop();
    });
  });
}
