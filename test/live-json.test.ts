/**
 * `--json` on the live action commands: one object per run, with a step per
 * upload/apply/unload, the same exit status as the text form.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { buildAll } from './helpers/toolchain.js';
import { Cli, freshStateDir, Processes, type CliResult } from './helpers/live.js';
import type { ActionJson } from '../src/cli/json-types.js';

const files = buildAll();
const state = freshStateDir('json');
const cli = new Cli(state);
const procs = new Processes();
after(async () => {
  await procs.stopAll();
  rmSync(state, { recursive: true, force: true });
});

function json(r: CliResult): ActionJson {
  assert.equal(r.stderr, '', `${r.cmd}: nothing on stderr with --json`);
  const v = JSON.parse(r.stdout) as ActionJson;
  assert.equal(r.stdout.trim().split('\n').length, 1, 'exactly one line');
  return v;
}

test('load/apply/unload/revert --json report each step and keep the exit status', async () => {
  const p = await procs.start(files.base!);
  let r = cli.run(p.pid, 'load', files.hello!, '--json');
  assert.equal(r.status, 0);
  let v = json(r);
  assert.equal(v.ok, true);
  assert.deepEqual(v.steps.map((s) => `${s.action}:${s.name}:${s.result}:${s.state}`), ['upload:hello:completed:CHECKED', 'apply:hello:completed:APPLIED']);
  assert.deepEqual(v.steps[1]!.hooksCalled, ['load', 'load']);
  assert.equal(await p.ask('v'), 'Hello World');

  // A failed apply: the step carries errno/code/message, the unload is a step too, exit 1.
  r = cli.run(p.pid, 'load', files.replace!, '--json');
  assert.equal(r.status, 1);
  v = json(r);
  assert.equal(v.ok, false);
  assert.deepEqual(v.steps.map((s) => `${s.action}:${s.ok}`), ['upload:true', 'apply:false', 'unload:true']);
  assert.equal(v.steps[1]!.errno, 'EINVAL');
  assert.equal(v.steps[1]!.code, -22);
  assert.match(v.steps[1]!.message, /checked against the top of the applied stack, hello/);

  v = json(cli.run(p.pid, 'apply', 'hello', '--json'));
  assert.equal(v.steps[0]!.result, 'no action needed');
  r = cli.run(p.pid, 'unload', 'hello', '--json');
  assert.equal(r.status, 1);
  assert.equal(json(r).steps[0]!.result, 'wrong state');
  r = cli.run(p.pid, 'revert', 'nosuch', '--json');
  assert.equal(r.status, 1);
  assert.equal(json(r).steps[0]!.errno, 'ENOENT');

  v = json(cli.run(p.pid, 'revert', 'hello', '--json'));
  assert.deepEqual(v.steps.map((s) => `${s.action}:${s.result}:${s.state}`), ['revert:completed:CHECKED']);
  assert.equal(await p.ask('v'), '-unstable');

  // A process that does not exist: still one JSON object, with the error.
  r = cli.run(2 ** 22 + 1, 'list', '--json');
  assert.equal(r.status, 1);
  r = cli.run(2 ** 22 + 1, 'apply', 'x', '--json');
  assert.equal(r.status, 1);
  const e = JSON.parse(r.stdout) as ActionJson;
  assert.equal(e.ok, false);
  assert.equal(e.error?.errno, 'ESRCH');
});
