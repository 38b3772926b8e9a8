/**
 * `hotstack diff` and `hotstack build --source --patch`: payloads made by
 * diffing objects compiled before and after a source patch, with real gcc
 * -O2 at test time, loaded live into the running shop (test/fixtures/diff)
 * and checked against a model of its answers, then reverted.
 *
 * Scenarios (one patch each, test/fixtures/diff/*.patch): a change to an
 * inlined function (its caller is included), a changed string literal, a
 * static counter kept across the patch, a new function and global, a .cold
 * part following its function, a constprop clone, a change of register
 * usage under -fipa-ra (the callers are included), stacked payloads and a
 * cumulative REPLACE; refused: a changed initializer, a dropped static
 * variable, __LINE__-only changes, no change, ORIG objects built with
 * other flags than the base.
 */
import assert from 'node:assert/strict';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { FIXTURES_DIR, run, startBase, type BaseProcess } from './helpers/toolchain.js';
import { Cli, showResult, type CliResult } from './helpers/live.js';
import type { DiffJson } from '../src/cli/json-types.js';

const FIX = join(FIXTURES_DIR, 'diff');
const CFLAGS = ['-O2', '-g'];
const work = mkdtempSync(join(tmpdir(), 'hotstack-diff-'));
const cli = new Cli(join(work, 'state'));
const srcDir = join(work, 'src');
const exe = join(work, 'shop');
const out = (n: string): string => join(work, n);
const running: BaseProcess[] = [];
after(async () => {
  for (const p of running) await p.stop();
  rmSync(work, { recursive: true, force: true });
});

/** What the shop answers, with the patches applied so far. */
class Model {
  totalItems = 0;
  seen = 0;
  checksDone = 0;
  fixes = new Set<string>();
  private weigh(n: number): number {
    let r = 0;
    for (let i = 0; i < n; i++) r += (i % (this.fixes.has('weigh') ? 5 : 7)) * 3 + (i & 3);
    return r;
  }
  answer(req: string): string {
    const n = Number(req.slice(1));
    switch (req[0]) {
      case 'p': {
        this.totalItems += n;
        const d = n >= 10 ? (this.fixes.has('discount') ? 20 : 5) : 0;
        return String(n * 100 - d * n);
      }
      case 'l': return n > 100 ? 'big order' : n > 10 ? 'medium order' : this.fixes.has('label') ? 'small basket' : 'small order';
      case 'v':
        this.seen += this.fixes.has('visits') ? 2 * n : n;
        return String(this.seen);
      case 'c':
        if (!this.fixes.has('audit')) return String(n * 3);
        this.checksDone++;
        return String(n * 3 + this.checksDone * (this.fixes.has('audit-again') ? 2000 : 1000) + (this.fixes.has('audit-plus') ? 1 : 0));
      case 's': return String(this.weigh(n) + this.weigh(n + 1));
      case 'z': return '0';
      case 'r': return n < 0 ? '-2' : n === 0 ? '-1' : String(Math.trunc((this.fixes.has('cold') ? 2000 : 1000) / n) + this.weigh(n));
      default: return String(this.totalItems);
    }
  }
}

const REQUESTS = ['p3', 'p12', 'l5', 'l50', 'v2', 'v3', 'c7', 'c9', 's6', 's20', 'r4', 'r0', 'r-3', 'r9', 'z0', 't'];

async function expectAnswers(svc: BaseProcess, model: Model, when: string): Promise<void> {
  for (const req of REQUESTS) assert.equal(await svc.ask(req), model.answer(req), `${when}: answer to ${req}`);
}

function ok(r: CliResult): CliResult {
  assert.equal(r.status, 0, showResult(r));
  return r;
}

/** The command failed with `errno`, its message matching `what`, and wrote nothing. */
function refused(r: CliResult, errno: string, what: RegExp, output: string): void {
  assert.equal(r.status, 1, showResult(r));
  assert.doesNotMatch(r.stderr, /\n\s+at /, `a stack trace:\n${showResult(r)}`);
  assert.match(r.stderr, new RegExp(`Error \\d+: ${errno}: `), showResult(r));
  assert.match(r.stderr, what, showResult(r));
  assert.ok(!existsSync(output), `${output} was written although the command failed`);
}

/** shop.c with `patches` applied (patch -p1), compiled like the base plus -ffunction-sections -fdata-sections. */
function objectWith(tag: string, patches: string[], flags = CFLAGS): string {
  const dir = out(`obj-${tag}`);
  cpSync(srcDir, dir, { recursive: true });
  for (const p of patches) run('patch', ['-p1', '--batch', '--silent', '-d', dir, '-i', join(FIX, `${p}.patch`)]);
  run('gcc', [...flags, '-ffunction-sections', '-fdata-sections', '-c', 'shop.c', '-o', 'shop.o'], { cwd: dir });
  return join(dir, 'shop.o');
}

/**
 * `hotstack diff --json` of ORIG (unpatched) against `patch`; the parsed report. trace_at() takes
 * __LINE__, so patches adding lines above label() would change it: named as a line macro.
 */
function diff(patch: string, extra: string[] = []): DiffJson {
  const r = ok(cli.raw(['diff', '--json', '--base', exe, '--expect', '--line-macro', 'trace_at', ...extra, '-o', out(`${patch}.livepatch`), objectWith('orig', []), objectWith(patch, [patch])]));
  return JSON.parse(r.stdout) as DiffJson;
}

before(() => {
  mkdirSync(srcDir);
  for (const f of ['main.c', 'shop.c', 'shop.h']) cpSync(join(FIX, f), join(srcDir, f));
  // The base is built the ordinary way, from its own directory (STT_FILE "shop.c").
  run('gcc', [...CFLAGS, '-Wl,--build-id=sha1', '-o', exe, 'main.c', 'shop.c'], { cwd: srcDir });
});

describe('hotstack diff', () => {
  const built = new Map<string, DiffJson>();

  it('includes the caller of a changed inlined function, with a record from the base', () => {
    const r = diff('discount', ['--meta', 'ticket=SHOP-12']);
    built.set('discount', r);
    assert.ok(r.metadata.includes('ticket=SHOP-12') && r.metadata.includes('hotstack.patched=price'), JSON.stringify(r.metadata));
    assert.ok(r.funcs[0]!.expect, 'price has an expectation (--expect)');
    const fns = r.pairs[0]!.functions;
    assert.deepEqual(fns.map((f) => [f.name, f.status, f.record]), [['price', 'changed', 'price']], JSON.stringify(fns));
    assert.deepEqual(r.funcs.map((f) => f.name), ['price']);
  });

  it('finds each scenario\'s changes: string literal, static counter, new code and data, .cold, constprop, -fipa-ra callers', () => {
    const records = (p: string): string[] => {
      const r = diff(p);
      built.set(p, r);
      return r.pairs[0]!.functions.filter((f) => f.record).map((f) => f.record!).sort();
    };
    assert.deepEqual(records('label'), ['label']);
    assert.deepEqual(records('visits'), ['visits']);
    assert.deepEqual(records('audit'), ['checked']);
    assert.ok(built.get('audit')!.pairs[0]!.functions.some((f) => f.name === 'audit' && f.status === 'new'), 'audit() is a new function');
    assert.deepEqual(records('cold'), ['ratio']);
    assert.ok(built.get('cold')!.pairs[0]!.functions.some((f) => f.name === 'ratio.cold' && f.status === 'follows'), 'ratio.cold follows ratio');
    assert.deepEqual(records('weigh'), ['shop.c#weigh.constprop.0']);
    // weigh() now calls fprintf: its callers compiled under -fipa-ra no longer keep values in
    // caller-saved registers across it, so their code changed and they are in the payload.
    assert.deepEqual(records('clobber'), ['scaled', 'shop.c#weigh.constprop.0']);
  });

  it('refuses what cannot change live, naming it, and writes nothing', () => {
    const orig = objectWith('orig', []);
    const attempt = (patched: string, name: string, errno: string, what: RegExp, o = orig): void => {
      const target = out(`refused-${name}.livepatch`);
      refused(cli.raw(['diff', '--base', exe, '-o', target, o, patched]), errno, what, target);
    };
    attempt(objectWith('rate', ['rate']), 'rate', 'EOPNOTSUPP', /variable rate changes \(initial value\)/);
    attempt(objectWith('visits-drop', ['visits-drop']), 'drop', 'EINVAL', /function visits no longer uses its static variable seen/);
    attempt(objectWith('ifunc', ['ifunc']), 'ifunc', 'EOPNOTSUPP', /IFUNC order_word is new or changed/);
    attempt(objectWith('line', ['line']), 'line', 'ENODATA', /no change: .*only line numbers moved, in checked/);
    attempt(orig, 'same', 'ENODATA', /no change/);
    // __LINE__ passed to a function of the program: a change, unless it is named with --line-macro.
    const traced = objectWith('trace-line', ['trace-line']);
    const moved = JSON.parse(ok(cli.raw(['diff', '--json', '--base', exe, '-o', out('trace-line.livepatch'), orig, traced])).stdout) as DiffJson;
    assert.deepEqual(moved.pairs[0]!.functions.map((f) => f.name), ['label']);
    assert.deepEqual(moved.pairs[0]!.lineOnly, ['checked']);
    const target = out('refused-trace.livepatch');
    refused(cli.raw(['diff', '--base', exe, '--line-macro', 'trace_at', '-o', target, orig, traced]), 'ENODATA', /only line numbers moved, in label, checked/, target);
    attempt(objectWith('tls', ['tls']), 'tls', 'EOPNOTSUPP', /thread-local static variable depth is new or changed/);
    attempt(objectWith('tls-use', ['tls-use']), 'tls-use', 'EOPNOTSUPP', /nested uses the thread-local depth/);
    attempt(objectWith('ctor', ['ctor']), 'ctor', 'EOPNOTSUPP', /constructor or destructor open_shop changes/);
    attempt(objectWith('bss', ['bss']), 'bss', 'EOPNOTSUPP', /static variable seen\.\d+ changes \(size 4 -> 8\)/);
    attempt(objectWith('tiny', ['tiny']), 'tiny', 'EINVAL', /function zero of .* is 3 bytes, too small to take a jump/);
    // Untrusted objects: each a one-line error naming the file, never a crash.
    const junk = out('junk.o');
    writeFileSync(junk, 'not an object\n');
    attempt(junk, 'junk', 'EINVAL', /junk\.o/);
    const cut = out('cut.o');
    writeFileSync(cut, readFileSync(orig).subarray(0, 200));
    attempt(cut, 'cut', 'EINVAL', /cut\.o/);
    attempt(exe, 'exe', 'EINVAL', /shop is not a relocatable object/);
    const plain = out('plain.o');
    run('gcc', [...CFLAGS, '-c', '-o', plain, 'shop.c'], { cwd: srcDir });
    attempt(plain, 'plain', 'EINVAL', /holds several functions .*-ffunction-sections -fdata-sections/, plain);
    const otherFlags = ['-O1', '-g'];
    attempt(objectWith('O1', ['discount'], otherFlags), 'flags', 'EINVAL', /function \w+: .*built with another compiler or other flags than the base/, objectWith('orig-O1', [], otherFlags));
    refused(cli.raw(['diff', '--base', exe, '-o', out('odd.livepatch'), orig]), 'EINVAL', /in pairs/, out('odd.livepatch'));
  });

  it('patches the running shop live with each diff-built payload, and reverts', async () => {
    const svc = await startBase(exe);
    running.push(svc);
    const model = new Model();
    await expectAnswers(svc, model, 'unpatched');
    for (const p of ['discount', 'label', 'visits', 'audit', 'cold', 'weigh', 'clobber']) {
      ok(cli.run(svc.pid, 'load', out(`${p}.livepatch`)));
      model.fixes.add(p);
      await expectAnswers(svc, model, `with ${p}`);
      ok(cli.run(svc.pid, 'revert', p));
      model.fixes.delete(p);
      await expectAnswers(svc, model, `after reverting ${p}`);
      ok(cli.run(svc.pid, 'unload', p));
    }
    assert.deepEqual(cli.states(svc.pid), []);
  });
});

describe('hotstack build --source --patch', () => {
  const build = (name: string, patches: string[], extra: string[] = [], flags = CFLAGS): CliResult =>
    cli.raw(['build', '--base', exe, '--source', srcDir, ...patches.flatMap((p) => ['--patch', join(FIX, `${p}.patch`)]), ...extra, '-o', out(name), '--', ...flags]);

  it('builds stacked payloads and a cumulative one from source patches; they load, stack and REPLACE live', async () => {
    ok(build('s1.livepatch', ['discount'], ['--expect']));
    ok(build('s2.livepatch', ['discount', 'label'], ['--expect', '--depends', out('s1.livepatch')]));
    const cum = JSON.parse(ok(cli.raw(['build', '--json', '--base', exe, '--source', srcDir, '--patch', join(FIX, 'discount.patch'), '--patch', join(FIX, 'label.patch'), '--patch', join(FIX, 'visits.patch'),
      '--cumulative', '--cflags-from-dwarf', '-o', out('cum.livepatch')])).stdout) as DiffJson;
    assert.deepEqual(cum.funcs.map((f) => f.name).sort(), ['label', 'price', 'visits']);

    const svc = await startBase(exe);
    running.push(svc);
    const model = new Model();
    await expectAnswers(svc, model, 'unpatched');
    ok(cli.run(svc.pid, 'load', out('s1.livepatch')));
    model.fixes.add('discount');
    ok(cli.run(svc.pid, 'load', out('s2.livepatch')));
    model.fixes.add('label');
    await expectAnswers(svc, model, 'with s1 and s2');
    ok(cli.run(svc.pid, 'upload', 'cum', out('cum.livepatch')));
    ok(cli.run(svc.pid, 'replace', 'cum'));
    model.fixes.add('visits');
    await expectAnswers(svc, model, 'after REPLACE with the cumulative payload');
    ok(cli.run(svc.pid, 'revert', 'cum'));
    model.fixes.clear();
    await expectAnswers(svc, model, 'after reverting the cumulative payload');
    for (const n of ['s1', 's2', 'cum']) ok(cli.run(svc.pid, 'unload', n));

    // A payload stacked on one that introduced audit() and checks_done calls audit() there.
    ok(build('a1.livepatch', ['audit']));
    ok(build('a3.livepatch', ['audit', 'audit-plus'], ['--depends', out('a1.livepatch')]));
    ok(cli.run(svc.pid, 'load', out('a1.livepatch')));
    model.fixes.add('audit');
    await expectAnswers(svc, model, 'with audit');
    ok(cli.run(svc.pid, 'load', out('a3.livepatch')));
    model.fixes.add('audit-plus');
    await expectAnswers(svc, model, 'with audit-plus on audit');
    ok(cli.run(svc.pid, 'revert', 'a3'));
    model.fixes.delete('audit-plus');
    await expectAnswers(svc, model, 'after reverting audit-plus');

    // audit() itself changes: it is not in the base, a1 brought it, so the record names it and
    // the loader finds it among a1's symbols; the jump goes into a1's code, and back on revert.
    const a2 = JSON.parse(ok(build('a2.livepatch', ['audit', 'audit-again'], ['--json', '--depends', out('a1.livepatch')])).stdout) as DiffJson;
    // checked() inlines audit(), so it changes too (patched again, over a1's jump).
    assert.deepEqual(a2.funcs.map((f) => f.name).sort(), ['audit', 'checked']);
    ok(cli.run(svc.pid, 'load', out('a2.livepatch')));
    model.fixes.add('audit-again');
    await expectAnswers(svc, model, 'with audit-again patching a function of a1');
    const under = cli.run(svc.pid, 'revert', 'a1');
    assert.equal(under.status, 2, showResult(under)); // EBUSY
    assert.match(under.stderr, /EBUSY: a1 is not the top of the applied stack: revert a2 first/, showResult(under));
    ok(cli.run(svc.pid, 'revert', 'a2'));
    model.fixes.delete('audit-again');
    await expectAnswers(svc, model, 'after reverting audit-again');
  });

  it('refuses patches it cannot build, and objects compiled with other flags', () => {
    const r1 = build('x1.livepatch', ['discount', 'label']);
    refused(r1, 'EINVAL', /2 patches without --depends/, out('x1.livepatch'));
    const r2 = build('x2.livepatch', ['discount'], [], ['-O1', '-g']);
    refused(r2, 'EINVAL', /function \w+: .*shop\.c \(before the patch\).*other flags than the base/, out('x2.livepatch'));
    const r3 = build('x3.livepatch', ['rate']);
    refused(r3, 'EOPNOTSUPP', /shop\.c \(patched\): variable rate changes/, out('x3.livepatch'));
    if (!existsSync(out('a1.livepatch'))) ok(build('a1.livepatch', ['audit']));
    // audit() came with a1, not with a3, the payload named below this one.
    if (!existsSync(out('a3.livepatch'))) ok(build('a3.livepatch', ['audit', 'audit-plus'], ['--depends', out('a1.livepatch')]));
    const elsewhere = build('a2x.livepatch', ['audit', 'audit-plus', 'audit-again'], ['--depends', out('a3.livepatch')]);
    refused(elsewhere, 'EOPNOTSUPP', /function audit changes but is neither in the base .* nor brought by the payload it stacks on.*--cumulative/, out('a2x.livepatch'));
    const r4 = cli.raw(['build', '--base', exe, '--source', join(work, 'nowhere'), '--patch', join(FIX, 'label.patch'), '-o', out('x4.livepatch')]);
    refused(r4, 'ENOENT', /--source .*nowhere/, out('x4.livepatch'));
  });
});

describe('a real open-source file: cJSON (test/fixtures/diff/cjson)', () => {
  const dir = join(work, 'cjson');
  const svcExe = join(work, 'jsonsvc');
  const payload = join(work, 'escape-solidus.livepatch');
  const QUESTIONS: [string, string, string][] = [
    ['{"url":"https://example.org/a/b","n":[1,2.5]}', '{"url":"https://example.org/a/b","n":[1,2.5]}', '{"url":"https:\\/\\/example.org\\/a\\/b","n":[1,2.5]}'],
    ['["</script>", "say \\"hi\\""]', '["</script>","say \\"hi\\""]', '["<\\/script>","say \\"hi\\""]'],
    ['{"plain":"text"}', '{"plain":"text"}', '{"plain":"text"}'],
    ['{broken', 'invalid', 'invalid'],
  ];
  const expectAll = async (svc: BaseProcess, fixed: boolean, when: string): Promise<void> => {
    for (const [q, before, afterFix] of QUESTIONS) assert.equal(await svc.ask(q), fixed ? afterFix : before, `${when}: answer to ${q}`);
  };

  it('builds the payload of a patch to cJSON.c with --cflags-from-dwarf and escapes "/" live', async () => {
    cpSync(join(FIX, 'cjson'), dir, { recursive: true });
    // Built the ordinary way: without -ffunction-sections gas lays out some cJSON functions
    // differently (cJSON_Duplicate_rec: a 5-byte jump where ORIG.o has a 2-byte one, other
    // padding), which the ORIG-matches-base check must accept as the same code.
    run('gcc', [...CFLAGS, '-Wl,--build-id=sha1', '-o', svcExe, 'jsonsvc.c', 'cJSON.c', '-lm'], { cwd: dir });
    const plain = run('nm', ['-S', svcExe]).match(/^\S+ (\S+) T cJSON_Duplicate_rec$/m);
    const own = join(work, 'cjson-fs.o');
    run('gcc', [...CFLAGS, '-ffunction-sections', '-fdata-sections', '-c', '-o', own, 'cJSON.c'], { cwd: dir });
    const split = run('nm', ['-S', own]).match(/^\S+ (\S+) T cJSON_Duplicate_rec$/m);
    assert.ok(plain && split);
    if (plain[1] === split[1]) console.log('# note: this toolchain lays cJSON_Duplicate_rec out the same way with and without -ffunction-sections');
    const r = JSON.parse(ok(cli.raw(['build', '--json', '--base', svcExe, '--source', dir, '--patch', join(FIX, 'cjson', 'escape-solidus.patch'), '--cflags-from-dwarf', '--expect', '-o', payload])).stdout) as DiffJson;
    assert.deepEqual(r.funcs.map((f) => f.name), ['cJSON.c#print_string_ptr']);

    const svc = await startBase(svcExe);
    running.push(svc);
    await expectAll(svc, false, 'unpatched');
    ok(cli.run(svc.pid, 'load', payload));
    await expectAll(svc, true, 'patched');
    ok(cli.run(svc.pid, 'revert', 'escape-solidus'));
    await expectAll(svc, false, 'reverted');
  });
});

describe('a split function: gcc ipa-split (test/fixtures/diff/split)', () => {
  it('patches a changed .part clone together with its parent, live, like the fixed program', async () => {
    const dir = join(work, 'split');
    const fixedDir = join(work, 'split-fixed');
    const patch = join(FIX, 'split', 'split.patch');
    cpSync(join(FIX, 'split'), dir, { recursive: true });
    cpSync(join(FIX, 'split'), fixedDir, { recursive: true });
    run('patch', ['-p1', '--batch', '--silent', '-d', fixedDir, '-i', patch]);
    for (const d of [dir, fixedDir]) run('gcc', [...CFLAGS, '-Wl,--build-id=sha1', '-o', 'split', 'main.c', 'split.c'], { cwd: d });
    // The scenario needs the split: slow_log's body in its own slow_log.part.N.
    assert.match(run('nm', [join(dir, 'split')]), /\bslow_log\.part\.\d+$/m, 'gcc -O2 split slow_log (ipa-split)');
    const payload = join(work, 'split.livepatch');
    const r = JSON.parse(ok(cli.raw(['build', '--json', '--base', join(dir, 'split'), '--source', dir, '--patch', patch, '-o', payload, '--', ...CFLAGS])).stdout) as DiffJson;
    const fns = r.pairs.flatMap((p) => p.functions);
    const part = fns.find((f) => /^slow_log\.part\.\d+$/.test(f.name));
    assert.equal(part?.status, 'changed', JSON.stringify(fns));
    // A changed child brings its parent: the part's interface is private to the two.
    assert.deepEqual(r.funcs.map((f) => f.name).sort(), ['split.c#slow_log', `split.c#${part.name}`]);

    const svc = await startBase(join(dir, 'split'));
    const fixed = await startBase(join(fixedDir, 'split'));
    running.push(svc, fixed);
    const questions = ['v 1', 'w 3', 'm 2', 'l 4', 'v 0', 'w 5', 'l 2', 'v 1', 'm 1'];
    const answers = async (p: BaseProcess): Promise<string[]> => {
      const a: string[] = [];
      for (const q of questions) a.push(await p.ask(q));
      return a;
    };
    const before = await answers(svc);
    const want = await answers(fixed);
    assert.notDeepEqual(before, want, 'the fix changes answers');
    ok(cli.run(svc.pid, 'load', payload));
    assert.deepEqual(await answers(svc), want, 'patched: answers as the fixed program');
    ok(cli.run(svc.pid, 'revert', 'split'));
    assert.deepEqual(await answers(svc), before, 'reverted');
  });
});
