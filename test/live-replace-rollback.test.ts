/**
 * REPLACE that fails after it reverted the stack (the new payload's apply
 * hook fails) must leave the previous stack applied, hooks included: Xen
 * would leave the base unpatched here, hotstack must not (actions.md).
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { buildAll, codeSizes } from './helpers/toolchain.js';
import { buildExtraPayload } from './helpers/extra.js';
import { Cli, freshStateDir, Processes } from './helpers/live.js';

const files = buildAll();
const failing = buildExtraPayload({ name: 'replace_fail', sources: ['replace_fail.c'], base: files.base!, sizes: codeSizes('replace_fail_extra_version', 'extra_version') });
const state = freshStateDir('replace-rollback');
const cli = new Cli(state);
const procs = new Processes();
after(async () => {
  await procs.stopAll();
  rmSync(state, { recursive: true, force: true });
});

test('a REPLACE whose apply hook fails leaves the previous stack applied, with its hooks re-run', async () => {
  const p = await procs.start(files.base!);
  assert.equal(cli.run(p.pid, 'load', files.hello!).status, 0);
  assert.equal(await p.ask('v'), 'Hello World');
  assert.equal(await p.ask('h'), '101', 'hello: 1 load hook run, cnt 1');
  assert.equal(cli.run(p.pid, 'upload', 'replace_fail', failing).status, 0);

  const r = cli.run(p.pid, 'replace', 'replace_fail');
  assert.equal(r.status, 1, r.stderr);
  assert.match(r.stderr, /Error 22: EINVAL: apply hook of replace_fail failed/);
  // hello's code is back, and so is what its unload hooks undid: its load hooks ran again.
  assert.equal(await p.ask('v'), 'Hello World');
  assert.deepEqual(cli.states(p.pid), ['hello:APPLIED', 'replace_fail:CHECKED']);
  const h = Number(await p.ask('h'));
  // loads*100 + unloads*10 + cnt: the revert ran 3 unload hooks (one bumps cnt), the restore 2 load hooks (one bumps cnt).
  assert.equal(h, 2 * 100 + 1 * 10 + 3 + 0, `hook state after rollback: ${h}`);

  // The stack still works as before: revert hello gives the original back.
  assert.equal(cli.run(p.pid, 'revert', 'hello').status, 0);
  assert.equal(await p.ask('v'), '-unstable');
});
