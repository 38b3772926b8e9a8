/**
 * Another compiler's output: the demo service and its patches compiled
 * with clang (integrated assembler, .llvm_addrsig sections, its own
 * relocation choices), built with `hotstack build --cc clang` and applied
 * to the running clang-built service, REPLACE included. .ci/run installs
 * clang; where it is missing the test says so and skips.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { run, startBase, type BaseProcess } from './helpers/toolchain.js';
import { Cli, REPO_ROOT } from './helpers/live.js';

const hasClang = spawnSync('clang', ['--version']).status === 0;
const work = mkdtempSync(join(tmpdir(), 'hotstack-clang-'));
const cli = new Cli(join(work, 'state'));
let svc: BaseProcess | undefined;
after(async () => {
  await svc?.stop();
  rmSync(work, { recursive: true, force: true });
});

test('clang-built service patched with clang-built payloads', { skip: !hasClang && 'clang is not installed (.ci/run installs it)' }, async () => {
  const exe = join(work, 'service');
  run('clang', ['-O2', '-Wl,--build-id=sha1', '-o', exe, 'server.c'], { cwd: join(REPO_ROOT, 'examples/service') });
  const patch = (n: string): string => join(REPO_ROOT, 'examples/patches', n);
  const out = (n: string): string => join(work, n);
  const build = (...args: string[]): void => {
    const r = cli.raw(['build', '--cc', 'clang', '--base', exe, ...args]);
    assert.equal(r.status, 0, `${r.cmd}\n${r.stdout}${r.stderr}`);
  };
  build('--expect', '-o', out('fix1.livepatch'), patch('fix1-discount.c'));
  build('--expect', '--depends', out('fix1.livepatch'), '-o', out('fix2.livepatch'), patch('fix2-greeting.c'));
  build('-o', out('cumulative.livepatch'), patch('cumulative.c')); // calls the static server.c#round_cents

  svc = await startBase(exe);
  assert.equal(await svc.ask('quote 3'), '3 items: $6.00');
  for (const f of ['fix1', 'fix2']) {
    const r = cli.run(svc.pid, 'load', out(`${f}.livepatch`));
    assert.equal(r.status, 0, `${r.cmd}\n${r.stdout}${r.stderr}`);
  }
  assert.equal(await svc.ask('quote 3'), '3 items: $7.50');
  assert.match(await svc.ask('hello'), /patched live/);
  assert.equal(cli.run(svc.pid, 'upload', 'cumulative', out('cumulative.livepatch')).status, 0);
  const r = cli.run(svc.pid, 'replace', 'cumulative');
  assert.equal(r.status, 0, `${r.cmd}\n${r.stdout}${r.stderr}`);
  assert.match(await svc.ask('hello'), /cumulative fix/);
  assert.equal(await svc.ask('quote 12'), '12 items: $24.00');
  assert.deepEqual(cli.states(svc.pid), ['cumulative:APPLIED', 'fix1:CHECKED', 'fix2:CHECKED']);
});
