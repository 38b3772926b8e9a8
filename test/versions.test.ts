/**
 * Symbol versions: glibc keeps old versions of some functions for old
 * programs (libm's exp of GLIBC_2.2.5 next to the default GLIBC_2.29). A
 * plain name binds to the default version, as ld.so binds it: in a debug
 * file's symbol table (names `exp@@GLIBC_2.29`, where `exp` was not found
 * at all) and in a stripped `.dynsym` (two plain `exp`, where the table's
 * order decided). The other version is reported as a copy the patch does
 * not reach. Built against the machine's libm and loaded into a plain
 * program calling exp().
 */
import assert from 'node:assert/strict';
import { copyFileSync, existsSync, mkdtempSync, readFileSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { STB_GLOBAL, STT_FUNC, SymbolIndex, type ElfSymbol } from '../src/elf/index.js';
import type { BuildJson } from '../src/cli/json-types.js';
import { Cli, expectCli, Processes } from './helpers/live.js';
import { FIXTURES_DIR, readBuildId, run } from './helpers/toolchain.js';

const SRC = join(FIXTURES_DIR, 'versions');
const work = mkdtempSync(join(tmpdir(), 'hotstack-versions-'));
const cli = new Cli(join(work, 'state'));
const procs = new Processes();
const exe = join(work, 'expo');

/** The libm.so.6 the program runs with (ldd), and the sizes of its default and hidden exp. */
function libm(): { path: string; defaultSize: number; hidden: boolean } {
  const m = /^\s*libm\.so\.6 => (\S+)/m.exec(run('ldd', [exe]));
  assert.ok(m, 'ldd shows libm.so.6');
  const path = realpathSync(m[1]!);
  const lines = run('readelf', ['-sW', '--dyn-syms', path]).split('\n').filter((l) => / exp@/.test(l));
  const def = lines.find((l) => / exp@@/.test(l));
  assert.ok(def, `${path} exports exp at a default version`);
  return { path, defaultSize: Number(def.trim().split(/\s+/)[2]), hidden: lines.some((l) => / exp@[^@]/.test(l)) };
}

describe('symbol versions: a plain name is the default version', () => {
  after(async () => {
    await procs.stopAll();
    rmSync(work, { recursive: true, force: true });
  });

  it('the symbol index: `exp` finds exp@@V (the default), not exp@V; a plain global still wins', () => {
    const sym = (index: number, name: string, value: bigint): ElfSymbol => ({ index, name, value, size: 8n, bind: STB_GLOBAL, type: STT_FUNC, other: 0, shndx: 1, file: undefined });
    const idx = new SymbolIndex([sym(1, 'exp@GLIBC_2.2.5', 0x10n), sym(2, 'exp@@GLIBC_2.29', 0x20n), sym(3, 'log@@GLIBC_2.29', 0x30n), sym(4, 'log', 0x40n)]);
    assert.equal(idx.lookup('exp')?.value, 0x20n);
    assert.ok(idx.hasGlobal('exp'));
    assert.equal(idx.lookup('exp@GLIBC_2.2.5')?.value, 0x10n, 'the other version by its full name');
    assert.equal(idx.lookup('log')?.value, 0x40n);
  });

  it('builds against libm (its debug file, or .dynsym only) patching the default exp, and the patch works live', async () => {
    run('gcc', ['-O2', '-Wall', '-Wextra', '-Wl,--build-id=sha1', '-o', exe, join(SRC, 'expo.c'), '-lm']);
    const lib = libm();
    const out = join(work, 'fix_exp.livepatch');
    const r = cli.raw(['build', '--base', lib.path, '--json', '-o', out, join(SRC, 'fix_exp.c')]);
    expectCli(r, { status: 0 });
    assert.equal((JSON.parse(r.stdout) as BuildJson).funcs[0]!.oldSize, lib.defaultSize, 'the default version\'s size');
    const id = readBuildId(lib.path);
    if (lib.hidden && existsSync(`/usr/lib/debug/.build-id/${id.slice(0, 2)}/${id.slice(2)}.debug`)) {
      assert.match(r.stdout, /exp@GLIBC_2\.2\.5 is another version of exp@@GLIBC_2\.29 at 0x[0-9a-f]+, kept for programs linked against it/, 'the other version reported (the debug file names both)');
    }

    // A copy whose build-id differs by one byte has no debug file: .dynsym only, the two exp unversioned there.
    const copy = join(work, 'libm-copy.so');
    copyFileSync(lib.path, copy);
    const bytes = readFileSync(copy);
    bytes[bytes.indexOf(Buffer.from(id, 'hex'))]! ^= 0xff;
    writeFileSync(copy, bytes);
    const d = cli.raw(['build', '--base', copy, '--json', '-o', join(work, 'fix_exp_copy.livepatch'), join(SRC, 'fix_exp.c')]);
    expectCli(d, { status: 0 });
    assert.equal((JSON.parse(d.stdout) as BuildJson).funcs[0]!.oldSize, lib.defaultSize, '.dynsym: the default version, whatever the table order');

    const p = await procs.start(exe);
    assert.equal(await p.ask('1'), '2.718282');
    expectCli(cli.run(p.pid, 'load', out), { status: 0 });
    assert.equal(await p.ask('1'), '1001.000000');
    expectCli(cli.run(p.pid, 'revert', 'fix_exp'), { status: 0 });
    assert.equal(await p.ask('1'), '2.718282');
  });
});
