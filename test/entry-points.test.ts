/**
 * Second entry points: code that branches into a function past its start,
 * as hand-written assembly does (glibc's mempcpy jumps 3 bytes into
 * memmove). A branch landing inside the bytes a patch writes would run
 * half of the jump: such a patch loaded, said "completed", and the program
 * died at its next call of the other entry. It is refused (EOPNOTSUPP) by
 * build, check and load; an entry past the patched bytes is reported (that
 * path runs the old code). The program is plain gcc -O2 with a few lines
 * of assembly; the payload that bypasses `hotstack build` is made with
 * Xen's recipe (gcc, nm, ld -r).
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { InteriorEntry } from '../src/analysis/types.js';
import type { FuncRecord } from '../src/core/state.js';
import { midPatchEntry } from '../src/core/safety.js';
import { Cli, expectCli, Processes } from './helpers/live.js';
import { FIXTURES_DIR, buildPayload, codeSizes, run } from './helpers/toolchain.js';

const SRC = join(FIXTURES_DIR, 'entry');
const work = mkdtempSync(join(tmpdir(), 'hotstack-entry-'));
const cli = new Cli(join(work, 'state'));
const procs = new Processes();
const exe = join(work, 'entry');
const out = (f: string): string => join(work, f);
const REFUSED = /EOPNOTSUPP.*function step: a jump at 0x[0-9a-f]+ in step_from lands 3 bytes into it, inside the 5-byte jump a patch writes at offset 0: it would run half an instruction/;
const ORIGINAL = '2 102 40 20';

interface AnalyzeJson { functions: { function: string; interiorEntries: (Omit<InteriorEntry, 'at'> & { at: string })[]; hazards: { kind: string; detail: string }[] }[] }

describe('second entry points: a branch into the patched bytes is refused, one past them reported', () => {
  before(() => {
    run('gcc', ['-O2', '-Wall', '-Wextra', '-Wl,--build-id=sha1', '-o', exe, join(SRC, 'entry.c')]);
  });
  after(async () => {
    await procs.stopAll();
    rmSync(work, { recursive: true, force: true });
  });

  it('analyze finds both entries, and the branches in their own functions are no callers', () => {
    const r = cli.raw(['analyze', '--base', exe, '--json', 'step', 'scale']);
    expectCli(r, { status: 0 });
    const [step, scale] = (JSON.parse(r.stdout) as AnalyzeJson).functions;
    assert.deepEqual(step!.interiorEntries.map((e) => [e.in, e.kind, e.offset, e.own, e.inCode]), [['step_from', 'jmp', 3, false, true]]);
    assert.match(step!.hazards.find((h) => h.kind === 'entry')!.detail, /a jump at 0x[0-9a-f]+ in step_from enters step 3 bytes past its start, inside the 5 bytes a patch's jump writes there: .* a patch of step is refused; patch step_from instead/);
    assert.deepEqual(scale!.interiorEntries.map((e) => [e.in, e.offset, e.own]), [['scale_from', 8, false]]);
    assert.match(scale!.hazards.find((h) => h.kind === 'entry')!.detail, /enters scale 8 bytes past its start: that path runs the old code, not the replacement; patch scale_from as well/);
  });

  it('build refuses the patch of step and writes nothing', () => {
    expectCli(cli.raw(['build', '--base', exe, '-o', out('fix_step.livepatch'), join(SRC, 'fix_step.c')]), { status: 1, stderr: REFUSED });
    assert.ok(!existsSync(out('fix_step.livepatch')));
  });

  it('a payload made without hotstack build is refused by check and by load; the process lives and answers as before', async () => {
    const raw = buildPayload({ name: 'fix_step_xen', sources: [join(SRC, 'fix_step_xen.c')], base: exe, sizes: codeSizes('fix_step_xen_step', 'step') }, work);
    expectCli(cli.raw(['check', '--image', exe, raw]), { status: 1, stdout: REFUSED });
    const p = await procs.start(exe);
    assert.equal(await p.ask('x'), ORIGINAL);
    expectCli(cli.run(p.pid, 'load', raw), { status: 1, stderr: REFUSED });
    assert.deepEqual(cli.states(p.pid), []);
    assert.equal(await p.ask('x'), ORIGINAL, 'step_from still runs step\'s intact code');
  });

  it('the function that branches in is patched instead, and an entry past the jump is reported, live', async () => {
    expectCli(cli.raw(['build', '--base', exe, '--expect', '-o', out('fix_step_from.livepatch'), join(SRC, 'fix_step_from.c')]), { status: 0 });
    const scale = cli.raw(['build', '--base', exe, '--expect', '--depends', out('fix_step_from.livepatch'), '-o', out('fix_scale.livepatch'), join(SRC, 'fix_scale.c')]);
    expectCli(scale, { status: 0, stdout: /hazard: scale: entry: a jump at 0x[0-9a-f]+ in scale_from enters scale 8 bytes past its start: that path runs the old code/ });
    const p = await procs.start(exe);
    assert.equal(await p.ask('x'), ORIGINAL);
    expectCli(cli.run(p.pid, 'load', out('fix_step_from.livepatch')), { status: 0 });
    assert.equal(await p.ask('x'), '2 201 40 20');
    expectCli(cli.run(p.pid, 'load', out('fix_scale.livepatch')), { status: 0 });
    // scale_from enters the old body past the jump: its answer stays the old one, as reported.
    assert.equal(await p.ask('x'), '2 201 200 20');
    expectCli(cli.run(p.pid, 'revert', 'fix_scale'), { status: 0 });
    expectCli(cli.run(p.pid, 'revert', 'fix_step_from'), { status: 0 });
    assert.equal(await p.ask('x'), ORIGINAL);
  });

  it('a .cold part jumping back into its function is the function\'s own, named or stripped', () => {
    const lib = out('libcold.so');
    run('gcc', ['-O2', '-Wall', '-Wextra', '-fPIC', '-shared', '-Wl,--build-id=sha1', '-o', lib, join(SRC, 'libcold.c')]);
    run('objcopy', ['--strip-all', lib, out('libcold-stripped.so')]);
    assert.match(run('nm', [lib]), / t checked\.cold\n/, 'gcc made a .cold part');
    for (const base of [lib, out('libcold-stripped.so')]) {
      const r = cli.raw(['analyze', '--base', base, '--json', 'checked']);
      expectCli(r, { status: 0 });
      const [checked] = (JSON.parse(r.stdout) as AnalyzeJson).functions;
      assert.ok(checked!.interiorEntries.length > 0, `${base}: the jump back is seen`);
      assert.ok(checked!.interiorEntries.every((e) => e.own), `${base}: ${JSON.stringify(checked!.interiorEntries)}`);
      assert.deepEqual(checked!.hazards.filter((h) => h.kind === 'entry'), [], base);
    }
  });

  it('which branches conflict with a patch: foreign ones inside it; its own only when others enter it; unknown bytes never', () => {
    const f = (patchOffset: number, jump = true): FuncRecord => ({ patchOffset, newAddr: jump ? 0x1000n : 0n, newSize: 8 } as FuncRecord);
    const e = (offset: number, own = false, inCode = true): InteriorEntry => ({ at: 0x10n, in: own ? 'f' : 'g', kind: 'jmp', offset, own, inCode });
    assert.equal(midPatchEntry(f(0), [e(3)])?.offset, 3);
    assert.equal(midPatchEntry(f(0), [e(5)]), undefined, 'past the 5-byte jump');
    assert.equal(midPatchEntry(f(4), [e(4)]), undefined, 'onto the jump itself, after endbr64');
    assert.equal(midPatchEntry(f(4), [e(8)])?.offset, 8);
    assert.equal(midPatchEntry(f(0), [e(2, true)]), undefined, 'a loop back to the start runs only in threads inside f (the consistency check)');
    assert.equal(midPatchEntry(f(0), [e(2, true), e(40)])?.own, true, 'unless other code enters f and may loop back');
    assert.equal(midPatchEntry(f(0), [e(3, false, false)]), undefined, 'bytes no symbol or unwind entry covers: maybe data');
    assert.equal(midPatchEntry(f(0, false), [e(6)])?.offset, 6, 'NOPs: 8 bytes of them');
  });
});
