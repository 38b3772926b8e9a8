/**
 * IFUNCs (STT_GNU_IFUNC), as glibc's string functions are: the symbol's
 * code is a resolver that ran when the program started, and every call
 * already goes to the implementation it chose. A patch of the resolver
 * changes nothing callers run (glibc's strlen kept its answers after a
 * load that said "completed"), so it is refused (EOPNOTSUPP) by build,
 * check and load alike, under the IFUNC's name or the resolver's own; a
 * patch of the implementation is what works. The program is compiled the
 * plain way (gcc -O2, an ifunc attribute); the payload that bypasses
 * `hotstack build` is made with Xen's recipe (gcc, nm, ld -r).
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, realpathSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ElfFile, SymbolIndex } from '../src/elf/index.js';
import { Cli, expectCli, Processes } from './helpers/live.js';
import { FIXTURES_DIR, buildPayload, codeSizes, run } from './helpers/toolchain.js';

const SRC = join(FIXTURES_DIR, 'ifunc');
const work = mkdtempSync(join(tmpdir(), 'hotstack-ifunc-'));
const cli = new Cli(join(work, 'state'));
const procs = new Processes();
const exe = join(work, 'ifunc');
const out = (f: string): string => join(work, f);
/** An ELF file as the tool reads it. */
const readElf = (path: string): ElfFile => ElfFile.parse(new Uint8Array(readFileSync(path)), path);
const REFUSED = /EOPNOTSUPP.*function measure: measure is an IFUNC of .*ifunc \(the resolver picked an implementation when the program started; the calls already bound would not change\): patch the implementations it can select instead/;

/** The libc.so.6 this test's programs run with (ldd), symbolic links resolved. */
function libc(): string | undefined {
  const m = /^\s*libc\.so\.6 => (\S+)/m.exec(run('ldd', [exe]));
  return m ? realpathSync(m[1]!) : undefined;
}

describe('IFUNCs: the resolver is never patched, the implementation is', () => {
  before(() => {
    run('gcc', ['-O2', '-Wall', '-Wextra', '-Wl,--build-id=sha1', '-o', exe, join(SRC, 'ifunc.c')]);
  });
  after(async () => {
    await procs.stopAll();
    rmSync(work, { recursive: true, force: true });
  });

  it('the symbol index finds the IFUNC at its resolver\'s address, under its own name', () => {
    const index = SymbolIndex.fromElf(readElf(exe));
    const measure = index.lookup('measure');
    assert.ok(measure?.isIfunc, 'measure is an IFUNC');
    assert.deepEqual(index.ifuncsAt(measure.value).map((s) => s.name), ['measure']);
    const resolver = index.lookup('resolve_measure');
    assert.equal(resolver?.value, measure.value, 'the resolver is the IFUNC symbol\'s code');
    assert.deepEqual(index.ifuncsAt(index.lookup('measure_fast')!.value), [], 'an implementation is no IFUNC');
  });

  it('build refuses a patch of the IFUNC, by its name or the resolver\'s', () => {
    expectCli(cli.raw(['build', '--base', exe, '-o', out('x.livepatch'), join(SRC, 'fix_resolver.c')]), { status: 1, stderr: REFUSED });
    assert.ok(!existsSync(out('x.livepatch')), 'no payload written');
    expectCli(cli.raw(['build', '--base', exe, '-o', out('x.livepatch'), join(SRC, 'fix_resolver.c'), '--', '-DBY_RESOLVER']), {
      status: 1, stderr: /EOPNOTSUPP.*function resolve_measure: resolve_measure is the resolver of the IFUNC measure of /,
    });
  });

  it('build refuses a patch of glibc\'s strlen when it is an IFUNC', (t) => {
    const lib = libc();
    if (!lib) return t.skip('ldd does not show libc.so.6');
    const strlen = SymbolIndex.dynamicOf(readElf(lib)).lookup('strlen');
    if (!strlen?.isIfunc) return t.skip(`strlen of ${lib} is no IFUNC here`);
    expectCli(cli.raw(['build', '--base', lib, '-o', out('strlen.livepatch'), join(SRC, 'strlen_fix.c')]), {
      status: 1, stderr: /EOPNOTSUPP.*function strlen: strlen is an IFUNC of /,
    });
  });

  it('a payload made without hotstack build is refused by check and by load; the process answers as before', async () => {
    const raw = buildPayload({ name: 'fix_ifunc', sources: [join(SRC, 'fix_ifunc.c')], base: exe, sizes: codeSizes('fix_ifunc_measure', 'measure') }, work);
    expectCli(cli.raw(['check', '--image', exe, raw]), { status: 1, stdout: REFUSED });
    const p = await procs.start(exe);
    assert.equal(await p.ask('abc'), '3 3');
    expectCli(cli.run(p.pid, 'load', raw), { status: 1, stderr: REFUSED });
    assert.deepEqual(cli.states(p.pid), [], 'nothing left loaded');
    assert.equal(await p.ask('abcd'), '4 4');
  });

  it('a patch of the implementation the resolver chose changes the answers, and reverts', async () => {
    expectCli(cli.raw(['build', '--base', exe, '--expect', '-o', out('fix_fast.livepatch'), join(SRC, 'fix_fast.c')]), { status: 0 });
    const p = await procs.start(exe);
    assert.equal(await p.ask('abc'), '3 3');
    expectCli(cli.run(p.pid, 'load', out('fix_fast.livepatch')), { status: 0, stdout: /Applying fix_fast\.\.\. completed/ });
    assert.equal(await p.ask('abc'), '1000 3');
    expectCli(cli.run(p.pid, 'revert', 'fix_fast'), { status: 0 });
    assert.equal(await p.ask('abc'), '3 3');
  });
});
