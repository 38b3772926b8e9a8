/**
 * `hotstack build` and `hotstack cflags`, through the real command line
 * (bin/hotstack as a separate process), with real gcc/ld/objcopy, checked
 * offline with `hotstack check` and live on a running base process.
 *
 * Sources: test/fixtures/build/*.c (payloads and a base with a tiny function)
 * and the fixture base test/fixtures/base/base.c.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { HOTSTACK_BIN, REPO_ROOT } from './helpers/repo.js';
import {
  buildBase, buildPayload, codeSizes, FIXTURES_DIR, functionBytes, readBuildId, readSection, run, startBase, symbolInfo,
  type BaseProcess,
} from './helpers/toolchain.js';
import type { BuildJson, CheckJson, InspectJson, OutputErrorJson } from '../src/cli/json-types.js';

const ROOT = REPO_ROOT;
const BIN = HOTSTACK_BIN;
const SRC = join(FIXTURES_DIR, 'build');
const src = (name: string): string => join(SRC, name);

interface Result { status: number | null; stdout: string; stderr: string; cmd: string }

let work = '';
/** Private TMPDIR of the CLI: hotstack build's work directories must not be left in it. */
let privateTmp = '';
let stateDir = '';

function hotstack(args: string[]): Result {
  const r = spawnSync(process.execPath, [BIN, ...args], {
    encoding: 'utf8',
    env: { ...process.env, TMPDIR: privateTmp, HOTSTACK_STATE_DIR: stateDir },
    timeout: 120_000,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  if (r.error) throw r.error;
  const res = { status: r.status, stdout: r.stdout, stderr: r.stderr, cmd: `hotstack ${args.join(' ')}` };
  if (args[0] === 'build') {
    const left = readdirSync(privateTmp).filter((f) => f.startsWith('hotstack-build-'));
    assert.deepEqual(left, [], `${res.cmd} left its work directory behind`);
  }
  return res;
}

function ok(r: Result): Result {
  assert.equal(r.status, 0, `${r.cmd} failed (status ${r.status}):\n${r.stdout}${r.stderr}`);
  return r;
}

/** A build that must fail with exit status 1, `errno`, every pattern in `msg`, and no OUT. */
function refused(args: string[], out: string, errno: string, ...msg: RegExp[]): Result {
  const r = hotstack(args);
  assert.equal(r.status, 1, `${r.cmd} should fail with status 1, got ${r.status}:\n${r.stdout}${r.stderr}`);
  assert.match(r.stderr, new RegExp(`Error \\d+: ${errno}: `), `${r.cmd}: expected ${errno}:\n${r.stderr}`);
  for (const m of msg) assert.match(r.stderr, m, `${r.cmd}:\n${r.stderr}`);
  assert.ok(!r.stderr.includes('    at '), `${r.cmd} printed a stack trace:\n${r.stderr}`);
  assert.ok(!existsSync(out), `${r.cmd} wrote ${out} although it failed`);
  assert.deepEqual(readdirSync(dirname(out)).filter((f) => f.includes('.tmp-')), [], 'temporary output left behind');
  return r;
}

function inspectJson(file: string): InspectJson {
  return JSON.parse(ok(hotstack(['inspect', '--json', file])).stdout) as InspectJson;
}

describe('hotstack build', () => {
  let base = '';
  let cetBase = '';
  let out = '';
  const chain = { p1: '', p2: '', p3: '' };
  const buildOut: Record<string, string> = {};

  before(() => {
    work = mkdtempSync(join(tmpdir(), 'hotstack-buildtest-'));
    privateTmp = join(work, 'tmp');
    stateDir = join(work, 'state');
    out = join(work, 'out');
    for (const d of [privateTmp, stateDir, out]) mkdirSync(d);
    base = buildBase({ outDir: join(work, 'default') });
    cetBase = buildBase({ outDir: join(work, 'cet'), cfProtection: true });
  });

  after(() => {
    if (work) rmSync(work, { recursive: true, force: true });
  });

  describe('a chain of three payloads', () => {
    it('builds p1 on the base, with the flags after --', () => {
      chain.p1 = join(out, 'p1.livepatch');
      const r = ok(hotstack(['build', '--base', base, '--expect', '--meta', 'ticket=BUG-1', '-o', chain.p1, src('p1.c'), '--', '-DP1_ANSWER="-p1"', '-Wall']));
      buildOut.p1 = r.stdout;
      assert.match(r.stdout, /^Built .*p1\.livepatch: payload p1$/m);
      assert.match(r.stdout, /depends +[0-9a-f]{40} \(the base /);
      assert.match(r.stdout, /extra_version: old \d+ bytes -> new \d+ bytes \(p1_extra_version\); expects \d+ bytes [0-9a-f]+/);
      const info = inspectJson(chain.p1);
      const baseId = readBuildId(base);
      assert.equal(info.depends, baseId);
      assert.equal(info.baseBuildId, baseId);
      assert.equal(info.buildId, readBuildId(chain.p1));
      assert.ok(info.metadata.includes('hotstack.name=p1'), info.metadata.join(';'));
      assert.ok(info.metadata.includes('hotstack.patched=extra_version'), info.metadata.join(';'));
      assert.ok(info.metadata.includes('ticket=BUG-1'), info.metadata.join(';'));
      const f = info.funcs[0]!;
      assert.equal(info.funcs.length, 1);
      assert.equal(f.name, 'extra_version');
      const oldSize = symbolInfo(base, 'extra_version').size;
      assert.equal(f.oldSize, oldSize, 'old_size is the base symbol size');
      assert.ok(f.newSize > 0);
      assert.ok(f.expect, 'expectation written');
      assert.equal(f.expect.len, Math.min(oldSize, 31));
      assert.equal(f.expect.bytes, functionBytes(base, 'extra_version', f.expect.len).toString('hex'));
      // No local symbols are left to be exported (records, static replacements).
      const syms = run('nm', [chain.p1]);
      assert.doesNotMatch(syms, /__hotstack_func_|p1_extra_version|_binary_/);
    });

    it('builds p2 on p1: the function p1 already patches gets no expectation, and says why', () => {
      chain.p2 = join(out, 'p2.livepatch');
      const r = ok(hotstack(['build', '--base', base, '--depends', chain.p1, '--expect', '-o', chain.p2, src('p2.c')]));
      buildOut.p2 = r.stdout;
      assert.match(r.stdout, /extra_version: .*no expectation, already patched by p1/);
      assert.match(r.stdout, /minor_version: .*expects \d+ bytes/);
      assert.match(r.stdout, /depends +[0-9a-f]{40} \(payload .*p1\.livepatch, p1\)/);
      assert.match(r.stdout, /checked +on .*: p1 \(--nodeps\) -> p2 applied/);
      const info = inspectJson(chain.p2);
      assert.equal(info.depends, readBuildId(chain.p1));
      assert.ok(info.metadata.includes('hotstack.patched=extra_version,minor_version'), info.metadata.join(';'));
      const byName = Object.fromEntries(info.funcs.map((f) => [f.name, f]));
      assert.equal(byName.extra_version!.expect, null);
      assert.ok(byName.minor_version!.expect);
    });

    it('builds p3 on p2, calling a base static and with hooks; --json', () => {
      chain.p3 = join(out, 'p3.livepatch');
      const r = ok(hotstack(['build', '--base', base, '--depends', chain.p2, '--expect', '--json', '-o', chain.p3, src('p3.c')]));
      const j = JSON.parse(r.stdout) as BuildJson;
      assert.equal(j.name, 'p3');
      assert.equal(j.buildId, readBuildId(chain.p3));
      assert.deepEqual(j.depends, { buildId: readBuildId(chain.p2), kind: 'payload', path: chain.p2, name: 'p2' });
      assert.deepEqual(j.patched, ['extra_version', 'minor_version']);
      assert.equal(j.funcs.length, 1);
      assert.equal(j.funcs[0]!.name, 'minor_version');
      assert.equal(j.funcs[0]!.expect, null);
      assert.equal(j.funcs[0]!.noExpectation, 'no expectation, already patched by p2');
      assert.deepEqual(j.hooks.map((h) => h.kind).sort(), ['load', 'unload']);
      assert.deepEqual(j.checks.map((s) => `${s.action} ${s.name} ${s.ok}`),
        ['upload p2 true', 'apply p2 true', 'upload p3 true', 'apply p3 true']);
      assert.match(run('nm', [chain.p3]), /U base\.c#base_helper/);
    });

    it('hotstack check --image base p1 p2 p3 passes', () => {
      const r = ok(hotstack(['check', '--image', base, '--json', chain.p1, chain.p2, chain.p3]));
      const j = JSON.parse(r.stdout) as CheckJson;
      assert.deepEqual(j.stack, ['p1', 'p2', 'p3']);
      assert.ok(j.steps.every((s) => s.ok), r.stdout);
    });

    it('loads p1, p2, p3 one by one into a running base, each taking effect', async () => {
      let proc: BaseProcess | undefined;
      try {
        proc = await startBase(base);
        const pid = String(proc.pid);
        const answers = async () => ({
          v: await proc!.ask('v'), m: await proc!.ask('m'), b: await proc!.ask('b'), h: await proc!.ask('h'),
        });
        assert.deepEqual(await answers(), { v: '-unstable', m: '42', b: '1001', h: '0' });
        ok(hotstack(['--pid', pid, 'load', chain.p1]));
        assert.deepEqual(await answers(), { v: '-p1', m: '42', b: '1001', h: '0' });
        ok(hotstack(['--pid', pid, 'load', chain.p2]));
        assert.deepEqual(await answers(), { v: '-p2', m: '2', b: '1001', h: '0' });
        ok(hotstack(['--pid', pid, 'load', chain.p3]));
        assert.deepEqual(await answers(), { v: '-p2', m: '3006', b: '1001', h: '33' });
        const list = ok(hotstack(['--pid', pid, 'list']));
        assert.match(list.stdout, /p1 +\| APPLIED/);
        assert.match(list.stdout, /p3 +\| APPLIED .*hotstack\.name=p3/);
        // Back down the stack: each revert restores the payload below it.
        ok(hotstack(['--pid', pid, 'revert', 'p3']));
        assert.deepEqual(await answers(), { v: '-p2', m: '2', b: '1001', h: '34' });
        ok(hotstack(['--pid', pid, 'revert', 'p2']));
        assert.deepEqual(await answers(), { v: '-p1', m: '42', b: '1001', h: '34' });
        ok(hotstack(['--pid', pid, 'revert', 'p1']));
        assert.deepEqual(await answers(), { v: '-unstable', m: '42', b: '1001', h: '34' });
      } finally {
        await proc?.stop();
      }
    });

    it('stacks on a payload hotstack did not build: its own records count as already patched', () => {
      const hello = buildPayload({ name: 'hello', sources: ['hello.c'], base, sizes: codeSizes('hello_extra_version', 'extra_version') }, join(work, 'default'));
      const onHello = join(out, 'onhello.livepatch');
      const r = ok(hotstack(['build', '--base', base, '--depends', hello, '--expect', '-o', onHello, src('p2.c')]));
      assert.match(r.stdout, /extra_version: .*no expectation, already patched by hello/);
      assert.match(r.stdout, /minor_version: .*expects/);
      assert.ok(inspectJson(onHello).metadata.includes('hotstack.patched=extra_version,minor_version'));
      ok(hotstack(['check', '--image', base, hello, onHello]));
    });

    it('NOP records: size from the macro, checked and applied offline', () => {
      const nop = join(out, 'nop.livepatch');
      const r = ok(hotstack(['build', '--base', base, '--expect', '-o', nop, src('nop.c')]));
      assert.match(r.stdout, /minor_version: NOP 2 bytes \(function is \d+ bytes\); expects/);
      const info = inspectJson(nop);
      assert.equal(info.funcs[0]!.kind, 'nop');
      assert.equal(info.funcs[0]!.newSize, 2);
      ok(hotstack(['check', '--image', base, nop]));
    });
  });

  describe('errors: exit status 1, the errno, a clear message, and no OUT', () => {
    const o = (n: string): string => join(out, `err-${n}.livepatch`);

    it('unknown function: ENOENT, naming it and suggesting nm', () => {
      refused(['build', '--base', base, '-o', o('unknown'), src('unknown.c')], o('unknown'), 'ENOENT', /no_such_function/, /nm /);
    });

    it('function too small for a jump: EINVAL with its size and what is needed', () => {
      const tinyDir = join(work, 'tiny');
      mkdirSync(tinyDir, { recursive: true });
      const tiny = join(tinyDir, 'tinybase');
      run('gcc', ['-O2', '-fcf-protection=none', '-Wl,--build-id=sha1', '-o', tiny, src('tinybase.c')]);
      refused(['build', '--base', tiny, '-o', o('tiny'), src('tiny.c')], o('tiny'), 'EINVAL', /tiny .* is 1 bytes/, /5 bytes/, /9 when the function starts with endbr64/);
      const cetTiny = join(tinyDir, 'tinybase-cet');
      run('gcc', ['-O2', '-fcf-protection=full', '-Wl,--build-id=sha1', '-o', cetTiny, src('tinybase.c')]);
      refused(['build', '--base', cetTiny, '-o', o('tiny'), src('tiny.c')], o('tiny'), 'EINVAL', /is 5 bytes/, /endbr64 \(it does\)/);
    });

    it('a thread-local variable of the base: EOPNOTSUPP naming it, the relocation, and what to do', () => {
      const tlsBase = join(work, 'tlsbase');
      run('gcc', ['-O2', '-Wl,--build-id=sha1', '-o', tlsBase, src('tlsbase.c')]);
      refused(['build', '--base', tlsBase, '-o', o('tls'), src('tls.c')], o('tls'), 'EOPNOTSUPP', /R_X86_64_TLSGD in \.rela\.text\.bump_tenfold\) against counter: thread-local storage \(a __thread or thread_local variable\) cannot be reached from a payload/, /through a function of the program/);
    });

    it('base without a build-id: ENODATA, telling to link with --build-id', () => {
      const noId = join(work, 'noid');
      run('gcc', ['-O2', '-Wl,--build-id=none', '-o', noId, 'base.c'], { cwd: join(FIXTURES_DIR, 'base') });
      refused(['build', '--base', noId, '-o', o('noid'), src('p2.c')], o('noid'), 'ENODATA', /no build-id/, /-Wl,--build-id/);
    });

    it('--depends that is not a payload: EINVAL', () => {
      refused(['build', '--base', base, '--depends', base, '-o', o('notpayload'), src('p2.c')], o('notpayload'), 'EINVAL', /--depends .* is not a payload/);
      const text = join(work, 'text.livepatch');
      writeFileSync(text, 'hello\n');
      refused(['build', '--base', base, '--depends', text, '-o', o('notpayload'), src('p2.c')], o('notpayload'), 'EINVAL', /is not a payload/);
    });

    it('--depends built for another base: EINVAL', () => {
      refused(['build', '--base', cetBase, '--depends', chain.p1 || join(out, 'p1.livepatch'), '-o', o('otherbase'), src('p2.c')], o('otherbase'), 'EINVAL', /was built for base build-id/);
    });

    it("compiler failure: EINVAL with the compiler's message", () => {
      refused(['build', '--base', base, '-o', o('broken'), src('broken.c')], o('broken'), 'EINVAL', /compiling .*broken\.c failed/, /this payload is deliberately broken/);
      // A missing -D (p1 needs P1_ANSWER) is a compiler error too.
      refused(['build', '--base', base, '-o', o('broken'), src('p1.c')], o('broken'), 'EINVAL', /P1_ANSWER is not defined/);
      refused(['build', '--base', base, '--cc', 'no-such-cc-hotstack', '-o', o('broken'), src('p2.c')], o('broken'), 'ENOENT', /no-such-cc-hotstack not found/);
    });

    it('nothing declared to patch: EINVAL', () => {
      refused(['build', '--base', base, '-o', o('nothing'), src('nothing.c')], o('nothing'), 'EINVAL', /nothing to patch/, /HOTSTACK_PATCH/);
    });

    it('missing sources: ENOENT', () => {
      refused(['build', '--base', base, '-o', o('missing'), join(work, 'nope.c')], o('missing'), 'ENOENT', /source file .*nope\.c does not exist/);
    });

    it('unreadable base: ENOENT naming it', () => {
      refused(['build', '--base', join(work, 'no-base'), '-o', o('nobase'), src('p2.c')], o('nobase'), 'ENOENT', /base .*no-base/);
    });

    it('bad --meta: EINVAL', () => {
      refused(['build', '--base', base, '--meta', 'novalue', '-o', o('meta'), src('p2.c')], o('meta'), 'EINVAL', /expected KEY=VALUE/);
      refused(['build', '--base', base, '--meta', 'hotstack.patched=x', '-o', o('meta'), src('p2.c')], o('meta'), 'EINVAL', /written by hotstack build/);
    });

    it('a payload the dry run refuses (exports a base global): its errno, and OUT is left as it was', () => {
      const existing = o('dup');
      writeFileSync(existing, 'previous contents');
      const r = hotstack(['build', '--base', base, '-o', existing, src('dupglobal.c')]);
      assert.equal(r.status, 1, r.stderr);
      assert.match(r.stderr, /Error 17: EEXIST: check against .* failed: upload .*base_counter/);
      assert.equal(readFileSync(existing, 'utf8'), 'previous contents');
      rmSync(existing);
    });

    it('NOP on a function a lower payload already patches (its first bytes are a jump): EINVAL', () => {
      refused(['build', '--base', base, '--depends', chain.p2, '-o', o('nopabove'), src('nop.c')], o('nopabove'), 'EINVAL', /minor_version is already patched lower in the stack \(by p2\)/, /HOTSTACK_PATCH/);
    });

    it('--json errors: one object with the errno', () => {
      const r = hotstack(['build', '--json', '--base', base, '-o', o('json'), src('unknown.c')]);
      assert.equal(r.status, 1);
      const j = JSON.parse(r.stdout) as OutputErrorJson;
      assert.equal(j.error.errno, 'ENOENT');
      assert.equal(j.error.code, -2);
      assert.match(j.error.message, /no_such_function/);
      assert.ok(!existsSync(o('json')));
    });
  });

  it('cflags: the printed flags compile a payload with plain gcc', () => {
    const r = ok(hotstack(['cflags']));
    const flags = r.stdout.trim();
    assert.match(flags, /-fPIC/);
    assert.match(flags, /-ffunction-sections/);
    assert.match(flags, /-fcf-protection=none/);
    assert.ok(flags.includes(join(ROOT, 'include')), flags);
    const obj = join(work, 'cflags-p2.o');
    run('sh', ['-c', `gcc -c ${flags} -o "${obj}" "${src('p2.c')}"`]);
    const funcs = readSection(obj, '.livepatch.funcs');
    assert.equal(funcs.length, 2 * 104);
    assert.equal(funcs[32], 2, 'version 2');
    assert.match(ok(hotstack(['cflags', '--help'])).stdout, /\.livepatch\.depends/);
  });

  it('builds a chain against the CET base (endbr64: jumps after it)', () => {
    const c1 = join(out, 'cet1.livepatch');
    const c2 = join(out, 'cet2.livepatch');
    const c3 = join(out, 'cet3.livepatch');
    const nop = join(out, 'cetnop.livepatch');
    assert.match(ok(hotstack(['build', '--base', cetBase, '--expect', '-o', c1, src('p1.c'), '--', '-DP1_ANSWER="-c1"'])).stdout,
      /extra_version: .*jump after endbr64; expects 31 bytes f30f1efa/);
    const r2 = ok(hotstack(['build', '--base', cetBase, '--depends', c1, '--expect', '-o', c2, src('p2.c'), '--', '-fcf-protection=full']));
    assert.match(r2.stdout, /extra_version: .*no expectation, already patched by cet1/);
    ok(hotstack(['build', '--base', cetBase, '--depends', c2, '--expect', '-o', c3, src('p3.c')]));
    // 6 bytes: the 4 of endbr64 (kept) and the 2-byte short jump.
    ok(hotstack(['build', '--base', cetBase, '--expect', '-o', nop, src('nop.c'), '--', '-DNOP_BYTES=6']));
    const j = JSON.parse(ok(hotstack(['check', '--json', '--image', cetBase, c1, c2, c3])).stdout) as CheckJson;
    assert.deepEqual(j.stack, ['cet1', 'cet2', 'cet3']);
    ok(hotstack(['check', '--image', cetBase, nop]));
    refused(['build', '--base', cetBase, '-o', join(out, 'cetnop4.livepatch'), src('nop.c'), '--', '-DNOP_BYTES=4'], join(out, 'cetnop4.livepatch'), 'EINVAL', /endbr64/);
  });

  it('loads the CET chain into a running CET base', async () => {
    const c = (n: number): string => join(out, `cet${n}.livepatch`);
    let proc: BaseProcess | undefined;
    try {
      proc = await startBase(cetBase);
      const pid = String(proc.pid);
      ok(hotstack(['--pid', pid, 'load', c(1)]));
      assert.equal(await proc.ask('v'), '-c1');
      ok(hotstack(['--pid', pid, 'load', c(2)]));
      assert.equal(await proc.ask('v'), '-p2');
      assert.equal(await proc.ask('m'), '2');
      ok(hotstack(['--pid', pid, 'load', c(3)]));
      assert.equal(await proc.ask('m'), '3006');
      assert.equal(await proc.ask('h'), '33');
    } finally {
      await proc?.stop();
    }
  });
});
