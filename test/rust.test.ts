/**
 * Another language's compiler: a plain Rust program (rustc -C opt-level=2,
 * its standard library linked in), whose exported C-ABI function is patched
 * live by a C payload and reverted. Skipped where rustc is not installed.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { Cli, expectCli, Processes } from './helpers/live.js';
import { FIXTURES_DIR, run } from './helpers/toolchain.js';

const SRC = join(FIXTURES_DIR, 'rust');
const hasRustc = spawnSync('rustc', ['--version']).status === 0;

describe('a Rust program', { skip: !hasRustc && 'rustc is not installed' }, () => {
  const work = mkdtempSync(join(tmpdir(), 'hotstack-rust-'));
  const cli = new Cli(join(work, 'state'));
  const procs = new Processes();
  after(async () => {
    await procs.stopAll();
    rmSync(work, { recursive: true, force: true });
  });

  it('its exported function patched live by a C payload, with the unwind hazard reported, then reverted', async () => {
    const exe = join(work, 'price');
    run('rustc', ['-C', 'opt-level=2', '-C', 'link-arg=-Wl,--build-id=sha1', '-o', exe, join(SRC, 'price.rs')]);
    const out = join(work, 'fix_price.livepatch');
    expectCli(cli.raw(['build', '--base', exe, '--expect', '-o', out, join(SRC, 'fix_price.c')]), {
      status: 0, stdout: /hazard: price: unwind: price can be unwound through and the object unwinds for exceptions \(C\+\+ exceptions, Rust panics\)/,
    });
    const p = await procs.start(exe);
    assert.equal(await p.ask('4'), '36');
    expectCli(cli.run(p.pid, 'load', out), { status: 0 });
    assert.equal(await p.ask('4'), '4000');
    assert.equal(await p.ask('9'), '9000');
    expectCli(cli.run(p.pid, 'revert', 'fix_price'), { status: 0 });
    assert.equal(await p.ask('4'), '36');
  });
});
