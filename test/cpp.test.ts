/**
 * C++: a plain g++ -O2 program with a class, patched live by payloads
 * written in C++ (hotstack.h compiles as C++), built with g++ and, when
 * installed, clang++; the method is named by its mangled name. Before,
 * the header's _Static_assert stopped every C++ payload at compile time.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Cli, expectCli, Processes } from './helpers/live.js';
import { FIXTURES_DIR, run } from './helpers/toolchain.js';

const SRC = join(FIXTURES_DIR, 'cpp');
const work = mkdtempSync(join(tmpdir(), 'hotstack-cpp-'));
const cli = new Cli(join(work, 'state'));
const procs = new Processes();
const exe = join(work, 'shop');
const hasClang = spawnSync('clang++', ['--version']).status === 0;

describe('C++ programs and C++ payloads', () => {
  before(() => {
    run('g++', ['-O2', '-g', '-Wall', '-Wextra', '-Wl,--build-id=sha1', '-o', exe, join(SRC, 'shop.cc')]);
  });
  after(async () => {
    await procs.stopAll();
    rmSync(work, { recursive: true, force: true });
  });

  for (const cc of ['g++', 'clang++']) {
    it(`a payload built with ${cc} patches the method live, and reverts`, { skip: cc === 'clang++' && !hasClang && 'clang++ is not installed (.ci/run installs clang)' }, async () => {
      const out = join(work, `fix_total-${cc}.livepatch`);
      expectCli(cli.raw(['build', '--cc', cc, '--base', exe, '--expect', '-o', out, join(SRC, 'fix_total.cc')]), {
        status: 0, stdout: /_ZNK4Shop5totalEi: old \d+ bytes -> new \d+ bytes \(fixed_total|_ZL11fixed_totalPK4Shopi\)/,
      });
      const p = await procs.start(exe);
      assert.equal(await p.ask('x'), '675 3');
      expectCli(cli.run(p.pid, 'load', out), { status: 0 });
      assert.equal(await p.ask('x'), '637 3');
      expectCli(cli.run(p.pid, 'revert', `fix_total-${cc}`), { status: 0 });
      assert.equal(await p.ask('x'), '675 3');

      // std::to_string: libstdc++ calls, inline template data (g++: unique symbols, refused as
      // GNU OS ABI before), a personality word the program defines too (EEXIST before).
      const str = join(work, `fix_total_string-${cc}.livepatch`);
      expectCli(cli.raw(['build', '--cc', cc, '--base', exe, '-o', str, join(SRC, 'fix_total_string.cc')]), { status: 0 });
      expectCli(cli.run(p.pid, 'load', str), { status: 0 });
      assert.equal(await p.ask('x'), '660 3', '749 less 12% (10 + two digits)');
      expectCli(cli.run(p.pid, 'revert', `fix_total_string-${cc}`), { status: 0 });
      assert.equal(await p.ask('x'), '675 3');
    });
  }

  it('a throw in a C++ payload fails the build (no exception can work in payload code)', () => {
    const src = join(work, 'throws.cc');
    writeFileSync(src, '#include <hotstack.h>\n#include <stdexcept>\nstatic int t(const void *, int d) { if (d < 0) throw std::runtime_error("no"); return d; }\nHOTSTACK_PATCH(_ZNK4Shop5totalEi, t);\n');
    expectCli(cli.raw(['build', '--cc', 'g++', '--base', exe, '-o', join(work, 'throws.livepatch'), src]), { status: 1, stderr: /EINVAL: compiling .*throws\.cc failed.*-fexceptions/s });
  });

  it('a function exceptions pass through: the build and analyze say an exception through the replacement ends the process', () => {
    const prog = join(work, 'checked');
    run('g++', ['-O2', '-Wall', '-Wextra', '-Wl,--build-id=sha1', '-o', prog, join(SRC, 'checked.cc')]);
    const unwind = /hazard: _Z4worki: unwind: _Z4worki can be unwound through and the object unwinds for exceptions \(C\+\+ exceptions, Rust panics\): an exception passing through the replacement .* ends the process \(std::terminate, or an abort\), because .* \(a catch in the replacement is not found either\)/;
    expectCli(cli.raw(['build', '--cc', 'g++', '--base', prog, '-o', join(work, 'fix_work.livepatch'), join(SRC, 'fix_work.cc')]), { status: 0, stdout: unwind });
    const r = cli.raw(['analyze', '--base', prog, '_Z4worki', 'main']);
    expectCli(r, { status: 0, stdout: /unwind: _Z4worki can be unwound through/ });
    // A C program has no exceptions: no such hazard.
    const c = cli.raw(['analyze', '--base', '/bin/true']);
    assert.doesNotMatch(c.stdout, /unwind/);
  });
});
