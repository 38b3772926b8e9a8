/**
 * Programs nobody annotated for us: labels.c compiled the ordinary way
 * (gcc -O2 -g, clang -O2), patched live with payloads that call snprintf.
 *
 * Under gcc, main keeps values in caller-saved registers across calls to
 * label() and unit() (-fipa-ra): a replacement calling snprintf clobbers
 * them, so without a preserving veneer the program prints garbage. Every
 * answer is compared with a model of the program, so a corrupted register
 * or a patch that does nothing fails the test. scale() is inlined into
 * all its callers: `build` must refuse to patch it.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { FIXTURES_DIR, run, startBase, type BaseProcess } from './helpers/toolchain.js';
import { Cli, readMemory, runtimeAddress, showResult } from './helpers/live.js';
import type { ActionJson, AnalyzeJson, CheckJson } from '../src/cli/json-types.js';
import { ProcessTarget } from '../src/targets/process/target.js';
import { Engine } from '../src/core/engine.js';

const SRC = join(FIXTURES_DIR, 'realprog');
const hasClang = spawnSync('clang', ['--version']).status === 0;
const work = mkdtempSync(join(tmpdir(), 'hotstack-realprog-'));
const cli = new Cli(join(work, 'state'));
const running: BaseProcess[] = [];
after(async () => {
  for (const p of running) await p.stop();
  rmSync(work, { recursive: true, force: true });
});

/** What labels.c answers, with or without the fixes applied. */
class Model {
  counter = 0n;
  constructor(public fixLabel = false, public fixUnit = false) {}
  private label(n: number): string {
    this.counter += BigInt(n & 7);
    return this.fixLabel ? `L${n & 7}` : ['zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven'][n & 7]!;
  }
  private unit(n: number): string {
    if (this.fixUnit) {
      this.counter += 20n;
      return `U${n % 5}`;
    }
    this.counter += BigInt(10 * (n % 5));
    return ['mm', 'cm', 'dm', 'm', 'km'][n % 5]!;
  }
  private static scale(n: number): number {
    let r = 0;
    for (; n > 0; n = Math.trunc(n / 10)) r += n % 10;
    return r * 3;
  }
  private static mix(a: number, b: number): bigint {
    let r = 1n;
    for (let i = 0; i < a; i++) r = BigInt.asIntN(64, r * 31n + BigInt(b)); // C long arithmetic wraps
    return r;
  }
  answer(req: string): string {
    const n = Number(req.slice(1));
    switch (req[0]) {
      case 'a': return `${this.label(n)} ${Model.scale(n + 1)} ${Model.mix(n, 2)}`;
      case 'b': return `${Model.mix(n, 3)} ${this.label(n + 1)} ${Model.scale(n)} ${this.unit(n)}`;
      case 'c': return `${Model.scale(n + 2)} ${Model.mix(n, 4)} ${this.unit(n + 1)} ${this.label(n + 2)}`;
      case 'n': return `${this.counter}`;
      default: return `? ${this.label(n)} ${this.unit(n)}`;
    }
  }
}

const REQUESTS = ['a3', 'b4', 'c5', 'x2', 'a11', 'b9', 'c0', 'n'];

async function expectAnswers(svc: BaseProcess, model: Model, when: string): Promise<void> {
  for (const req of REQUESTS) assert.equal(await svc.ask(req), model.answer(req), `${when}: answer to ${req}`);
}

function ok(r: ReturnType<Cli['raw']>): ReturnType<Cli['raw']> {
  assert.equal(r.status, 0, showResult(r));
  return r;
}

/**
 * Call sites of `fn` in `main` after which main reads a caller-saved
 * register (other than rax) in the very next instruction: the reliance the
 * analysis must find, seen with objdump.
 */
function sitesReadingAfterCall(exe: string, fn: string): string[] {
  const lines = run('objdump', ['-d', '--no-show-raw-insn', exe]).split('\n');
  const out: string[] = [];
  lines.forEach((l, i) => {
    if (!new RegExp(`call\\s+[0-9a-f]+ <${fn}>`).test(l)) return;
    const next = (lines[i + 1] ?? '').split('\t').pop() ?? '';
    const ops = next.replace(/^\S+\s*/, '');
    const src = ops.includes(',') ? ops.slice(0, ops.lastIndexOf(',')) : '';
    const m = src.match(/%(rdi|rsi|rdx|rcx|r8|r9|r10|r11)\b/);
    if (m) out.push(`${l.trim()} / ${next.trim()}`);
  });
  return out;
}

for (const cc of ['gcc', 'clang'] as const) {
  describe(`an ordinary ${cc} -O2 program`, { skip: cc === 'clang' && !hasClang && 'clang is not installed (.ci/run installs it)' }, () => {
    const dir = join(work, cc);
    const exe = join(dir, 'labels');
    const out = (n: string): string => join(dir, n);
    const flags = cc === 'gcc' ? ['-O2', '-g'] : ['-O2', '-g'];

    it('is built the plain way and, under gcc, relies on registers across calls', () => {
      run('mkdir', ['-p', dir]);
      run(cc, [...flags, '-Wl,--build-id=sha1', '-o', exe, join(SRC, 'labels.c')]);
      if (cc === 'gcc') {
        assert.ok(sitesReadingAfterCall(exe, 'label').length > 0, 'gcc no longer keeps a register live across call label: the fixture lost its point');
        const a = JSON.parse(ok(cli.raw(['analyze', '--base', exe, '--json', 'label', 'unit'])).stdout) as AnalyzeJson;
        for (const f of a.functions) {
          assert.equal(f.noCallers, false, `${f.function} has callers`);
          assert.ok(f.reliedRegisters.length > 0, `${f.function}: analyze found no register reliance:\n${JSON.stringify(f)}`);
        }
      }
    });

    it('refuses to build a patch of a function inlined into all its callers', () => {
      const target = out('scale.livepatch');
      const inlined = spawnSync('objdump', ['-d', exe], { encoding: 'utf8' }).stdout.match(/call\s+[0-9a-f]+ <scale>/);
      if (inlined) return; // this compiler kept real calls to scale(): nothing to refuse
      const r = cli.raw(['build', '--cc', cc, '--base', exe, '-o', target, join(SRC, 'fix-scale.c')]);
      assert.equal(r.status, 1, showResult(r));
      assert.match(r.stderr, /EINVAL: .*scale.*(inlined|no caller)/s, showResult(r));
      const a = JSON.parse(ok(cli.raw(['analyze', '--base', exe, '--json', 'scale'])).stdout) as AnalyzeJson;
      assert.equal(a.functions[0]!.noCallers, true);
      assert.ok(a.functions[0]!.hazards.some((h) => h.kind === 'inlined'));
      assert.ok(a.functions[0]!.inlinedInto.includes('main'), `inlinedInto: ${JSON.stringify(a.functions[0]!.inlinedInto)}`);
    });

    it('builds a chain of payloads calling snprintf and the program\'s globals, checks it offline', () => {
      ok(cli.raw(['build', '--cc', cc, '--base', exe, '--expect', '-o', out('fix-label.livepatch'), join(SRC, 'fix-label.c')]));
      ok(cli.raw(['build', '--cc', cc, '--base', exe, '--expect', '--depends', out('fix-label.livepatch'), '-o', out('fix-unit.livepatch'), join(SRC, 'fix-unit.c')]));
      const r = ok(cli.raw(['check', '--json', '--image', exe, out('fix-label.livepatch'), out('fix-unit.livepatch')]));
      const report = JSON.parse(r.stdout) as CheckJson;
      assert.ok(report.steps.every((s) => s.ok), r.stdout);
      if (cc === 'gcc') {
        const up = report.steps.filter((s) => s.action === 'upload');
        assert.deepEqual(up.map((s) => s.veneers.map((v) => v.function)), [['label'], ['unit']], 'offline check names the functions that get veneers');
      }
    });

    // Only gcc keeps registers live across calls here: the clang build gets no veneer.
    if (cc === 'gcc') it('uploads a payload with veneers in one stop of the process (its memory, resolvers and veneers)', async () => {
      const svc = await startBase(exe);
      running.push(svc);
      const env = process.env.HOTSTACK_STATE_DIR;
      process.env.HOTSTACK_STATE_DIR = join(work, `stops-${cc}`);
      const t = ProcessTarget.open(svc.pid);
      try {
        const rec = new Engine(t).upload('fix-label', readFileSync(out('fix-label.livepatch')));
        assert.ok(rec.funcs.some((f) => f.veneer), 'label gets a veneer');
        assert.equal(t.pauses.length, 1, `stops: ${t.pauses.length}`);
      } finally {
        t.close();
        if (env === undefined) delete process.env.HOTSTACK_STATE_DIR;
        else process.env.HOTSTACK_STATE_DIR = env;
      }
      await svc.stop();
    });

    it('patches the running program live: every answer right, the veneers gone after revert and unload', async () => {
      const svc = await startBase(exe);
      running.push(svc);
      const model = new Model();
      await expectAnswers(svc, model, 'unpatched');
      const entry = runtimeAddress(svc.pid, exe, 'label');
      const original = readMemory(svc.pid, entry, 16);

      const l1 = ok(cli.run(svc.pid, 'load', out('fix-label.livepatch')));
      if (cc === 'gcc') assert.match(l1.stdout, /veneer: label: callers keep/, showResult(l1));
      model.fixLabel = true;
      await expectAnswers(svc, model, 'after fix-label');

      // A thread inside the replacement (entered through the veneer under gcc): revert waits for it,
      // gives up with EBUSY, and the thread comes back through the veneer with its registers intact.
      const slow = svc.ask('a99', 20_000);
      await new Promise((r) => setTimeout(r, 100));
      const busy = cli.run(svc.pid, 'revert', '--timeout', '300', 'fix-label');
      assert.equal(busy.status, 2, showResult(busy));
      assert.match(busy.stderr, /EBUSY/, showResult(busy));
      assert.equal(await slow, model.answer('a99'), 'the answer of the request that was inside the replacement');
      assert.deepEqual(cli.states(svc.pid), ['fix-label:APPLIED']);
      // Given time, revert retries in short stops of its own until the thread has left, and says how many it took.
      const slow2 = svc.ask('a99', 20_000);
      await new Promise((r) => setTimeout(r, 100));
      const waited = ok(cli.run(svc.pid, 'revert', '--json', '--timeout', '10000', 'fix-label'));
      const steps = (JSON.parse(waited.stdout) as ActionJson).steps;
      assert.equal(steps[0]!.ok, true, waited.stdout);
      assert.ok(steps[0]!.tries! > 1, `revert waited for the thread: ${waited.stdout}`);
      assert.equal(await slow2, model.answer('a99'), 'the request finished in the replacement before the revert');
      model.fixLabel = false;
      await expectAnswers(svc, model, 'after reverting fix-label while a thread was in it');
      // Its .bss is no longer pristine (Xen's rule): unload, load afresh.
      ok(cli.run(svc.pid, 'unload', 'fix-label'));
      ok(cli.run(svc.pid, 'load', out('fix-label.livepatch')));
      model.fixLabel = true;

      ok(cli.run(svc.pid, 'load', out('fix-unit.livepatch')));
      model.fixUnit = true;
      await expectAnswers(svc, model, 'after fix-unit');

      const listed = cli.list(svc.pid) as unknown as { name: string; veneers: { function: string; registers: string[]; address: string }[] }[];
      const veneers = listed.flatMap((p) => p.veneers ?? []);
      if (cc === 'gcc') assert.deepEqual(veneers.map((v) => v.function).sort(), ['label', 'unit']);

      ok(cli.run(svc.pid, 'revert', 'fix-unit'));
      model.fixUnit = false;
      await expectAnswers(svc, model, 'after reverting fix-unit');
      ok(cli.run(svc.pid, 'revert', 'fix-label'));
      model.fixLabel = false;
      await expectAnswers(svc, model, 'after reverting fix-label');
      assert.deepEqual(readMemory(svc.pid, entry, 16), original, 'label() has its original first bytes again');

      const mapped = (addr: bigint): boolean => readFileSync(`/proc/${svc.pid}/maps`, 'utf8').split('\n').some((l) => {
        const m = /^([0-9a-f]+)-([0-9a-f]+) /.exec(l);
        return !!m && BigInt('0x' + m[1]) <= addr && addr < BigInt('0x' + m[2]);
      });
      for (const v of veneers) assert.ok(mapped(BigInt(v.address)), `veneer of ${v.function} is mapped while loaded`);
      ok(cli.run(svc.pid, 'unload', 'fix-unit'));
      ok(cli.run(svc.pid, 'unload', 'fix-label'));
      for (const v of veneers) assert.ok(!mapped(BigInt(v.address)), `veneer of ${v.function} is gone after unload`);
      await expectAnswers(svc, model, 'after unload');
    });
  });
}
