/**
 * The conformance sequence of scenarios.md and the rules of actions.md /
 * payload-format.md, on the offline image target, for each fixture variant
 * (plain PIE, CET with endbr64, non-PIE).  Offline, hooks cannot run: the
 * engine reports them in hooksSkipped.  Where possible the assertions are
 * on the bytes of the image memory: the `e9 rel32` at each patch site, the
 * original bytes after a revert, the NOPs.
 *
 * Every assertion states the rule it checks; when one fails, the engine
 * (not the test) disagrees with the spec.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import { before, describe, it } from 'node:test';
import { cmdAction, cmdList, cmdLoad, cmdUpload } from '../src/cli/lifecycle.js';
import { HotstackError } from '../src/errors.js';
import { Engine } from '../src/core/engine.js';
import { buildBaseWithoutBuildId, buildExtraPayload, cBytes } from './helpers/extra.js';
import { FUNC, PayloadElf, SHF } from './helpers/elfedit.js';
import {
  assertNoStackTrace, captureIo, cli, hex, Session, throwsErrno, type CliResult,
} from './helpers/engine.js';
import { buildAll, functionBytes, nopSize, readBuildId, symbolInfo, VARIANTS } from './helpers/toolchain.js';
import type { CheckJson } from '../src/cli/json-types.js';

/** The Intel SDM's recommended NOPs, 1 to 9 bytes ("canonical multi-byte NOP sequences"). */
const CANONICAL_NOPS = [
  '90', '6690', '0f1f00', '0f1f4000', '0f1f440000', '660f1f440000', '0f1f8000000000', '0f1f840000000000', '660f1f840000000000',
];

/** Whether `b` is a sequence of canonical NOPs. */
function isNopSequence(b: Buffer): boolean {
  let h = hex(b);
  while (h.length) {
    const n = CANONICAL_NOPS.find((p) => h.startsWith(p));
    if (!n) return false;
    h = h.slice(n.length);
  }
  return true;
}

/** Parsed `check --json` output: exactly one JSON object on stdout. */
function parseCheckJson(r: CliResult): CheckJson {
  const text = r.stdout.trim();
  assert.ok(text.length > 0, `check --json printed nothing; stderr: ${r.stderr}`);
  assert.equal(text.split('\n').length, 1, `check --json prints exactly one JSON object (one line), got:\n${r.stdout}`);
  const j = JSON.parse(text) as CheckJson;
  assert.equal(typeof j, 'object');
  assert.ok(Array.isArray(j.steps) && Array.isArray(j.stack), 'steps and stack arrays');
  return j;
}

const modify = (path: string, fn: Parameters<PayloadElf['edit']>[0]): Buffer => new PayloadElf(readFileSync(path)).edit(fn);

for (const v of VARIANTS) {
  describe(`offline scenarios: ${v.dir} base`, () => {
    let files: Record<string, string>;
    const extra: Record<string, string> = {};
    const f = (key: string): string => {
      const p = extra[key] ?? files[v.prefix + key];
      assert.ok(p, `fixture ${v.prefix}${key}`);
      return p;
    };
    const session = (): Session => new Session(f('base'), f);
    let off = 0;
    /** minor_version's first bytes while nop is applied (what cumul_nop expects). */
    let whileNopHex = '';

    before(() => {
      files = buildAll();
      const base = files[v.prefix + 'base']!;
      off = v.cfProtection ? 4 : 0;
      const minor = functionBytes(base, 'minor_version', 8);
      // minor_version as it is while the nop fixture is applied: the
      // leading short jmp replaced by the canonical 2-byte NOP 66 90.
      const whileNop = Buffer.from(minor);
      assert.equal(nopSize(base), off + 2);
      whileNop[off] = 0x66;
      whileNop[off + 1] = 0x90;
      const sizes = (pfx: string) => ({
        NEW_EXTRA_SZ: { new: `${pfx}_extra_version` }, OLD_EXTRA_SZ: { old: 'extra_version' },
        NEW_MINOR_SZ: { new: `${pfx}_minor_version` }, OLD_MINOR_SZ: { old: 'minor_version' },
      });
      const cumul = (name: string, expect: Buffer): string => buildExtraPayload({
        name, base, cfProtection: v.cfProtection, sources: ['cumul.c'], sizes: sizes(name),
        defines: { PFX: name, EXPECT_LEN: String(expect.length), EXPECT_BYTES: cBytes(expect) },
      });
      extra.cumul_nop = cumul('cumul_nop', whileNop);
      extra.cumul_base = cumul('cumul_base', minor);
      extra.export_again = buildExtraPayload({
        name: 'export_again', base, cfProtection: v.cfProtection, sources: ['export_again.c'],
        sizes: { NEW_CODE_SZ: { new: 'export_again_minor_version' }, OLD_CODE_SZ: { old: 'minor_version' } },
      });
      extra.noid_base = buildBaseWithoutBuildId(v);
      whileNopHex = whileNop.toString('hex');
    });

    // -----------------------------------------------------------------
    // scenarios.md "The sequence", through the xen-livepatch style
    // commands (src/cli/lifecycle.ts) on an image engine, plus bytes.

    describe('the conformance sequence of scenarios.md (steps 1-16), with the xen-livepatch command behaviour', () => {
      // One engine for the whole sequence, one test per step: a failing step does not hide the ones after it.
      let s: Session;
      let e: Session['engine'];
      let c: ReturnType<typeof captureIo>;
      let afterReplace: string;
      let nopped: Buffer;
      let hb: string;
      let ex: string;
      let pp: string;
      before(() => {
        s = session();
        e = s.engine;
        c = captureIo();
      });
      const run = (_what: string, fn: () => number): number => {
        c.reset();
        return fn();
      };
      const ctx = (): string => `stdout: ${JSON.stringify(c.out())} stderr: ${JSON.stringify(c.err())}`;

      it('step 1: fresh target', () => {
        assert.equal(run('list', () => cmdList(e, c.io)), 0);
        assert.equal(c.out(), 'Nothing to list\n', 'step 1: list on a fresh target says "Nothing to list" (actions.md list)');
        assert.equal(run('revert', () => cmdAction(e, 'revert', 'hello', {}, c.io)), 1, `step 1: revert of an unknown name exits 1; ${ctx()}`);
        assert.match(c.err(), /ENOENT/, 'step 1: unknown name is ENOENT (actions.md action)');
      });

      it('step 2: load hello', () => {
        assert.equal(run('load', () => cmdLoad(e, f('hello'), {}, c.io)), 0, `step 2: load hello; ${ctx()}`);
        assert.match(c.out(), new RegExp(`^Uploading ${f('hello').replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\.\\.\\. completed\\n`), 'step 2: "Uploading FILE... completed"');
        assert.match(c.out(), /Applying hello\.\.\. completed\n/, 'step 2: "Applying hello... completed"');
        assert.deepEqual(e.get('hello'), { state: 'APPLIED', rc: 0 }, 'step 2: hello APPLIED, rc 0');
        s.assertJump('extra_version', s.newAddr('hello'), 'step 2');
        assert.equal(s.returnedString(s.newAddr('hello')), 'Hello World', 'step 2: the base now returns "Hello World"');
        assert.equal(run('load', () => cmdLoad(e, f('hello'), {}, c.io)), 1, `step 2: load hello again fails; ${ctx()}`);
        assert.match(c.err(), /Error 17: EEXIST/, 'step 2: load hello again: EEXIST (actions.md upload: unique name)');
        assert.deepEqual(s.names(), ['hello']);
      });

      it('step 3: revert, unload, unload again', () => {
        assert.equal(run('revert', () => cmdAction(e, 'revert', 'hello', {}, c.io)), 0, `step 3: revert hello; ${ctx()}`);
        assert.match(c.out(), /Reverting hello\.\.\. completed/);
        s.assertOriginal('extra_version', 'step 3: original behaviour back');
        assert.equal(run('unload', () => cmdAction(e, 'unload', 'hello', {}, c.io)), 0, `step 3: unload hello; ${ctx()}`);
        assert.equal(run('unload', () => cmdAction(e, 'unload', 'hello', {}, c.io)), 1, 'step 3: unload hello again: unknown name, exit 1');
        assert.match(c.err(), /ENOENT/);
      });

      it('step 4: hello then bye', () => {
        assert.equal(run('load', () => cmdLoad(e, f('hello'), {}, c.io)), 0, `step 4: load hello; ${ctx()}`);
        assert.equal(run('load', () => cmdLoad(e, f('bye'), {}, c.io)), 0, `step 4: load bye; ${ctx()}`);
        s.assertJump('extra_version', s.newAddr('bye'), 'step 4');
        assert.equal(s.returnedString(s.newAddr('bye')), 'Bye World!', 'step 4: "Bye World!"');
      });

      it('step 5: replace', () => {
        assert.equal(run('upload', () => cmdUpload(e, 'replace', f('replace'), c.io)), 0, `step 5: upload replace; ${ctx()}`);
        assert.equal(run('replace', () => cmdAction(e, 'replace', 'replace', {}, c.io)), 0, `step 5: replace replace; ${ctx()}`);
        assert.deepEqual(s.stack(), ['replace'], 'step 5: the stack is [replace]');
        assert.equal(e.get('hello').state, 'CHECKED', 'step 5: hello reverted');
        assert.equal(e.get('bye').state, 'CHECKED', 'step 5: bye reverted');
        s.assertJump('extra_version', s.newAddr('replace'), 'step 5');
        assert.equal(s.returnedString(s.newAddr('replace')), 'Hello Again World!', 'step 5: "Hello Again World!"');
        afterReplace = s.snapshot();
      });

      it('step 6: apply hello: reverted and has .bss', () => {
        assert.equal(run('apply', () => cmdAction(e, 'apply', 'hello', {}, c.io)), 1, `step 6: apply hello fails; ${ctx()}`);
        assert.match(c.err(), /Error 22: EINVAL/, 'step 6: EINVAL (actions.md APPLY rule 1)');
        assert.equal(s.snapshot(), afterReplace, 'step 6: nothing changed');
      });

      it('step 7: apply bye: its dependency is hello, the top is replace', () => {
        assert.equal(run('apply', () => cmdAction(e, 'apply', 'bye', {}, c.io)), 1, `step 7: apply bye fails; ${ctx()}`);
        assert.match(c.err(), /Error 22: EINVAL/, 'step 7: EINVAL (actions.md APPLY rule 2)');
        assert.match(c.err(), /replace/, 'step 7: the error names what it was checked against (the top, replace)');
        assert.equal(s.snapshot(), afterReplace, 'step 7: nothing changed');
      });

      it('step 8: apply replace: already applied', () => {
        assert.equal(run('apply', () => cmdAction(e, 'apply', 'replace', {}, c.io)), 0, `step 8: apply replace; ${ctx()}`);
        assert.equal(c.out(), 'No action needed.\n', 'step 8: "No action needed."');
      });

      it('step 9: revert replace, unload all three', () => {
        assert.equal(run('revert', () => cmdAction(e, 'revert', 'replace', {}, c.io)), 0, `step 9: revert replace; ${ctx()}`);
        s.assertOriginal('extra_version', 'step 9: revert replace gives the bare base back');
        for (const n of ['replace', 'hello', 'bye']) {
          assert.equal(run('unload', () => cmdAction(e, 'unload', n, {}, c.io)), 0, `step 9: unload ${n}; ${ctx()}`);
        }
        assert.equal(run('list', () => cmdList(e, c.io)), 0);
        assert.equal(c.out(), 'Nothing to list\n', 'step 9: list is empty again');
      });

      it('step 10: nop: load, revert, apply again', () => {
        assert.equal(run('load', () => cmdLoad(e, f('nop'), {}, c.io)), 0, `step 10: load nop; ${ctx()}`);
        nopped = s.head('minor_version');
        assert.equal(hex(nopped.subarray(off, off + 2)), '6690', 'step 10: the leading jmp of minor_version is NOPed');
        assert.equal(run('revert', () => cmdAction(e, 'revert', 'nop', {}, c.io)), 0, `step 10: revert nop; ${ctx()}`);
        s.assertOriginal('minor_version', 'step 10: revert nop');
        assert.equal(run('apply', () => cmdAction(e, 'apply', 'nop', {}, c.io)), 0, `step 10: re-apply nop is allowed (no writable data); ${ctx()}`);
        assert.equal(hex(s.head('minor_version')), hex(nopped), 'step 10: NOPs back');
      });

      it('step 11: unload while applied: wrong state', () => {
        assert.equal(run('unload', () => cmdAction(e, 'unload', 'nop', {}, c.io)), 1, 'step 11: unload nop while applied exits 1');
        assert.match(c.err(), /nop is in the wrong state/, 'step 11: "nop is in the wrong state."');
        assert.match(c.err(), /APPLIED/, 'step 11: the current state is shown');
        assert.match(c.err(), /CHECKED/, 'step 11: the expected state is shown');
        assert.equal(run('revert', () => cmdAction(e, 'revert', 'nop', {}, c.io)), 0);
        assert.equal(run('unload', () => cmdAction(e, 'unload', 'nop', {}, c.io)), 0);
        s.assertOriginal('minor_version', 'step 11');
      });

      it('step 12: bye on the bare base', () => {
        assert.equal(run('load', () => cmdLoad(e, f('bye'), {}, c.io)), 1, `step 12: load bye on an empty stack fails; ${ctx()}`);
        assert.match(c.err(), /Error 22: EINVAL/, 'step 12: EINVAL');
        assert.match(c.err(), new RegExp(readBuildId(f('base'))), 'step 12: checked against the base (its build-id is named)');
        assert.equal(e.find('bye'), undefined, 'step 12: load unloads bye again when the apply fails');
        assert.equal(run('upload', () => cmdUpload(e, 'bye', f('bye'), c.io)), 0);
        assert.equal(run('apply', () => cmdAction(e, 'apply', 'bye', { nodeps: true }, c.io)), 0, `step 12: apply bye --nodeps; ${ctx()}`);
        s.assertJump('extra_version', s.newAddr('bye'), 'step 12: bye applied with --nodeps');
        assert.equal(run('revert', () => cmdAction(e, 'revert', 'bye', {}, c.io)), 0);
        assert.equal(run('unload', () => cmdAction(e, 'unload', 'bye', {}, c.io)), 0);
      });

      it('step 13: [hello, bye]: revert hello is EBUSY naming bye', () => {
        assert.equal(run('load', () => cmdLoad(e, f('hello'), {}, c.io)), 0, `step 13: load hello; ${ctx()}`);
        assert.equal(run('load', () => cmdLoad(e, f('bye'), {}, c.io)), 0, `step 13: load bye; ${ctx()}`);
        hb = s.snapshot();
        assert.equal(run('revert', () => cmdAction(e, 'revert', 'hello', {}, c.io)), 2, `step 13: revert hello under bye exits 2; ${ctx()}`);
        assert.match(c.err(), /Error 16: EBUSY/, 'step 13: EBUSY');
        assert.match(c.err(), /bye/, 'step 13: the error names the top, bye');
        assert.equal(s.snapshot(), hb, 'step 13: nothing changed');
        assert.deepEqual(s.stack(), ['hello', 'bye']);
      });

      it('step 14: no_base_id', () => {
        assert.equal(run('upload', () => cmdUpload(e, 'no_base_id', f('no_base_id'), c.io)), 1, `step 14: upload no_base_id fails; ${ctx()}`);
        assert.match(c.out(), /Uploading .*no_base_id\.livepatch\.\.\. failed/, 'step 14: "... failed"');
        assert.match(c.err(), /Error 22: EINVAL/, 'step 14: EINVAL');
        assert.deepEqual(s.names(), ['hello', 'bye'], 'step 14: nothing left loaded');
        for (const n of ['bye', 'hello']) {
          assert.equal(run('revert', () => cmdAction(e, 'revert', n, {}, c.io)), 0);
          assert.equal(run('unload', () => cmdAction(e, 'unload', n, {}, c.io)), 0);
        }
      });

      it('step 15: expect / expect_fail', () => {
        assert.equal(run('load', () => cmdLoad(e, f('expect'), {}, c.io)), 0, `step 15: load expect; ${ctx()}`);
        s.assertJump('extra_version', s.newAddr('expect'), 'step 15');
        ex = s.snapshot();
        assert.equal(run('load', () => cmdLoad(e, f('expect_fail'), {}, c.io)), 1, 'step 15: load expect_fail fails');
        assert.match(c.err(), /Error 22: EINVAL/, 'step 15: EINVAL');
        assert.equal(s.snapshot(), ex, 'step 15: nothing changes');
        assert.deepEqual(s.names(), ['expect'], 'step 15: expect_fail unloaded again');
        assert.equal(run('revert', () => cmdAction(e, 'revert', 'expect', {}, c.io)), 0);
        assert.equal(run('unload', () => cmdAction(e, 'unload', 'expect', {}, c.io)), 0);
      });

      it('step 16: prepost (offline: hooks are reported as not run)', () => {
        assert.equal(run('load', () => cmdLoad(e, f('prepost'), {}, c.io)), 0, `step 16: load prepost; ${ctx()}`);
        assert.match(c.out(), /hooks not run: preapply, postapply/, 'step 16: the skipped hooks are reported');
        s.assertJump('extra_version', s.newAddr('prepost'), 'step 16');
        assert.equal(run('upload', () => cmdUpload(e, 'replace', f('replace'), c.io)), 0);
        pp = s.snapshot();
        assert.equal(run('replace', () => cmdAction(e, 'replace', 'replace', {}, c.io)), 1, 'step 16: REPLACE with prepost loaded fails');
        assert.match(c.err(), /Error 95: EOPNOTSUPP/, 'step 16: EOPNOTSUPP (actions.md REPLACE: vetoing hooks)');
        assert.equal(s.snapshot(), pp, 'step 16: nothing changed');
        assert.deepEqual(s.stack(), ['prepost']);
        assert.equal(run('revert', () => cmdAction(e, 'revert', 'prepost', {}, c.io)), 0, `step 16: revert prepost (no veto offline); ${ctx()}`);
        s.assertOriginal('extra_version', 'step 16: prepost reverted');
      });
    });

    it('list prints the xen-livepatch table: name padded to 40, "| ", state, rc when non-zero, "    | ", metadata, then the base column', () => {
      const s = session();
      const c = captureIo();
      s.load('hello');
      s.load('bye');
      s.upload('expect_fail');
      throwsErrno(() => s.replace('expect_fail'), 'EINVAL', undefined, 'REPLACE expect_fail');
      assert.equal(cmdList(s.engine, c.io), 0);
      const lines = c.out().split('\n');
      const baseName = basename(f('base'));
      // Metadata is padded to the widest entry (at least 13, which keeps xen-livepatch's 15-dash rule), then " | " and the base's file name.
      const meta = (m: string) => m.padEnd(13);
      assert.equal(lines[0], ` ID${' '.repeat(37)}| status     | ${meta('metadata')} | base`, 'header " ID | status | metadata | base"');
      assert.equal(lines[1], `${'-'.repeat(40)}+${'-'.repeat(12)}+${'-'.repeat(15)}+${'-'.repeat(15)}`, 'a rule');
      assert.equal(lines[2], `${'hello'.padEnd(40)}| APPLIED    | ${meta('fixture=hello')} | ${baseName}`, 'row: name padded to 40, "| ", state, "    | ", metadata, " | ", base');
      assert.equal(lines[3], `${'bye'.padEnd(40)}| APPLIED    | ${meta('')} | ${baseName}`, 'row without metadata');
      const rc = s.engine.get('expect_fail').rc;
      assert.equal(rc, -22, 'the failed REPLACE left its rc on the payload (Xen: data->rc)');
      assert.match(lines[4]!, new RegExp(`^${'expect_fail'.padEnd(40)}\\| CHECKED \\((22|EINVAL), Invalid argument\\)    \\| ${' '.repeat(13)} \\| ${baseName.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`),
        'actions.md list: when rc is non-zero " (errno, message)", then "    | " (four spaces, as after a plain state)');
      assert.equal(lines[5], '', 'three rows and nothing else');
    });

    // -----------------------------------------------------------------
    // Apply / revert / stack, on the engine API, each from a fresh image.

    it('APPLY writes e9 + rel32 to the replacement at extra_version (after endbr64 on CET); REVERT restores the bytes', () => {
      const s = session();
      s.upload('hello');
      assert.deepEqual(s.engine.get('hello'), { state: 'CHECKED', rc: 0 }, 'upload leaves CHECKED, rc 0');
      s.assertOriginal('extra_version', 'upload patches nothing');
      const out = s.apply('hello');
      assert.deepEqual(out.hooksCalled, [], 'offline no hook runs');
      assert.deepEqual(out.hooksSkipped, ['load', 'load'], 'hello\'s two load hooks are reported as skipped');
      assert.deepEqual(s.engine.get('hello'), { state: 'APPLIED', rc: 0 });
      const to = s.newAddr('hello');
      s.assertJump('extra_version', to, 'apply hello');
      assert.equal(s.returnedString(to), 'Hello World', 'the replacement is relocated: its lea finds "Hello World"');
      const rv = s.revert('hello');
      assert.deepEqual(rv.hooksSkipped, ['unload', 'unload', 'unload'], 'hello\'s three unload hooks are reported as skipped');
      assert.deepEqual(s.engine.get('hello'), { state: 'CHECKED', rc: 0 });
      s.assertOriginal('extra_version', 'revert hello');
      s.unload('hello');
      assert.deepEqual(s.names(), []);
      throwsErrno(() => s.engine.get('hello'), 'ENOENT', undefined, 'get after unload');
    });

    it('the bytes planned from are checked again inside the stop: changed meanwhile, EAGAIN and nothing changes', () => {
      const s = session();
      s.upload('hello');
      // Another writer between the plan (read while the threads run) and the stop.
      const site = s.site('extra_version');
      const tampered = Buffer.from(s.read(site, 5));
      tampered[0] ^= 0xff;
      const quiesce = s.target.quiesce.bind(s.target);
      s.target.quiesce = (busy, timeoutMs, fn) => {
        s.target.write(site, tampered);
        return quiesce(busy, timeoutMs, fn);
      };
      throwsErrno(() => s.apply('hello'), 'EAGAIN', /code at 0x[0-9a-f]+ changed while hotstack prepared the apply of hello/);
      s.target.quiesce = quiesce;
      assert.deepEqual(s.engine.get('hello').state, 'CHECKED');
      assert.deepEqual(s.read(site, 5), tampered, 'nothing written over the other writer');
      assert.deepEqual(new Engine(s.target).notices, [], 'no journal left to repair');
    });

    it('stacks LIFO: the upper payload saves the lower one\'s jump and puts it back on revert', () => {
      const s = session();
      s.load('hello');
      s.load('bye');
      s.assertJump('extra_version', s.newAddr('bye'), 'bye on hello');
      s.revert('bye');
      s.assertJump('extra_version', s.newAddr('hello'), 'revert bye: hello\'s jump is back');
      s.revert('hello');
      s.assertOriginal('extra_version', 'revert hello');
    });

    it('list: the applied stack bottom to top, then checked payloads in upload order', () => {
      const s = session();
      s.upload('replace');
      s.upload('nop');
      s.load('hello');
      s.load('bye');
      assert.deepEqual(s.names(), ['hello', 'bye', 'replace', 'nop']);
      const l = s.engine.list();
      assert.deepEqual(l.map((p) => p.state), ['APPLIED', 'APPLIED', 'CHECKED', 'CHECKED']);
      assert.deepEqual(l.find((p) => p.name === 'hello')!.metadata, ['fixture=hello'], 'list carries .modinfo metadata');
    });

    it('REPLACE reverts every applied payload top-down and leaves only the replacement applied', () => {
      const s = session();
      s.load('hello');
      s.load('bye');
      s.upload('replace');
      const out = s.replace('replace');
      assert.deepEqual(s.stack(), ['replace'], 'the stack is [replace]');
      assert.deepEqual(s.engine.get('hello'), { state: 'CHECKED', rc: 0 });
      assert.deepEqual(s.engine.get('bye'), { state: 'CHECKED', rc: 0 });
      assert.equal(out.hooksSkipped.filter((h) => h === 'unload').length, 3, `hello's 3 unload hooks reported skipped: ${out.hooksSkipped}`);
      assert.deepEqual(out.hooksCalled, []);
      s.assertJump('extra_version', s.newAddr('replace'), 'replace');
      assert.equal(s.returnedString(s.newAddr('replace')), 'Hello Again World!');
      // What follows REPLACE in scenarios.md 6-9.
      throwsErrno(() => s.apply('hello'), 'EINVAL', /unload/, 'apply hello after REPLACE (reverted, has .bss)');
      const bye = throwsErrno(() => s.apply('bye'), 'EINVAL', /replace/, 'apply bye on top of replace');
      assert.match(bye.message, new RegExp(s.rec('replace').buildId), 'names the build-id it was checked against');
      s.assertJump('extra_version', s.newAddr('replace'), 'failed applies change nothing');
      s.revert('replace');
      s.assertOriginal('extra_version', 'revert replace leaves the bare base, not hello/bye');
      for (const n of ['replace', 'hello', 'bye']) s.unload(n);
      assert.deepEqual(s.names(), []);
    });

    it('REPLACE of a payload that does not depend on the base is refused, nothing changes', () => {
      const s = session();
      s.load('hello');
      s.upload('bye');
      const snap = s.snapshot();
      // actions.md: REPLACE needs .livepatch.depends == the base's build-id (Xen: EINVAL).
      throwsErrno(() => s.replace('bye'), 'EINVAL', undefined, 'REPLACE bye');
      assert.equal(s.snapshot(), snap);
      assert.deepEqual(s.stack(), ['hello']);
    });

    it('a failing REPLACE (expectation false) leaves the previous stack and bytes exactly as before', () => {
      const s = session();
      s.load('hello');
      s.load('bye');
      s.upload('expect_fail');
      const snap = s.snapshot();
      throwsErrno(() => s.replace('expect_fail'), 'EINVAL', undefined, 'REPLACE expect_fail');
      assert.equal(s.snapshot(), snap, 'bytes exactly as before');
      assert.deepEqual(s.stack(), ['hello', 'bye'], 'stack as before');
      assert.equal(s.engine.get('expect_fail').state, 'CHECKED');
      // The undo buffers are intact: LIFO reverts still restore each layer.
      s.revert('bye');
      s.assertJump('extra_version', s.newAddr('hello'), 'revert bye after the failed REPLACE');
      s.revert('hello');
      s.assertOriginal('extra_version', 'revert hello after the failed REPLACE');
    });

    it('a REPLACE whose expectation holds before the reverts but not after them fails and puts the stack back', () => {
      const s = session();
      s.load('nop');
      const want = Buffer.from(whileNopHex, 'hex');
      assert.equal(hex(s.head('minor_version', want.length)), hex(want), 'precondition: cumul_nop expects the bytes minor_version has while nop is applied');
      s.upload('cumul_nop');
      const snap = s.snapshot();
      // actions.md REPLACE: "if any step fails, the previous stack is back in place".
      throwsErrno(() => s.replace('cumul_nop'), 'EINVAL', undefined, 'REPLACE cumul_nop over [nop]');
      assert.equal(s.snapshot(), snap, 'nop\'s NOPs are still in place and extra_version untouched');
      assert.deepEqual(s.stack(), ['nop']);
      assert.equal(s.engine.get('cumul_nop').state, 'CHECKED');
      s.revert('nop');
      s.assertOriginal('minor_version', 'nop still reverts cleanly');
    });

    it('a cumulative REPLACE over [nop] whose expectation holds on the bare base succeeds and patches both functions', () => {
      const s = session();
      s.load('nop');
      s.upload('cumul_base');
      s.replace('cumul_base');
      assert.deepEqual(s.stack(), ['cumul_base']);
      assert.equal(s.engine.get('nop').state, 'CHECKED');
      s.assertJump('extra_version', s.newAddr('cumul_base', 'extra_version'), 'cumul_base extra_version');
      s.assertJump('minor_version', s.newAddr('cumul_base', 'minor_version'), 'cumul_base minor_version');
      assert.equal(s.returnedString(s.newAddr('cumul_base', 'extra_version')), 'Cumulative World');
      s.revert('cumul_base');
      s.assertOriginal('extra_version', 'revert cumul_base');
      s.assertOriginal('minor_version', 'revert cumul_base: the bare base, not nop');
    });

    it('twofunc: both functions are patched and reverted together; a failing record patches neither', () => {
      const s = session();
      s.load('twofunc');
      assert.deepEqual(s.rec('twofunc').funcs.map((x) => x.name).sort(), ['extra_version', 'minor_version']);
      s.assertJump('extra_version', s.newAddr('twofunc', 'extra_version'), 'twofunc extra');
      s.assertJump('minor_version', s.newAddr('twofunc', 'minor_version'), 'twofunc minor');
      assert.equal(s.returnedString(s.newAddr('twofunc', 'extra_version')), 'Two World');
      assert.equal(hex(s.read(s.newAddr('twofunc', 'minor_version') + BigInt(off), 6)), 'b802000000c3', 'twofunc_minor_version: mov $2,%eax; ret');
      s.revert('twofunc');
      s.assertOriginal('extra_version', 'twofunc reverted');
      s.assertOriginal('minor_version', 'twofunc reverted');
      // cumul_nop's first record is fine, its second expects NOPs that are not there.
      s.upload('cumul_nop');
      throwsErrno(() => s.apply('cumul_nop'), 'EINVAL', undefined, 'apply cumul_nop on the bare base');
      s.assertOriginal('extra_version', 'all or nothing: the first record was not patched either');
      s.assertOriginal('minor_version', 'all or nothing');
      assert.equal(s.engine.get('cumul_nop').state, 'CHECKED');
    });

    it('APPLY after REVERT: EINVAL with .bss (hello), allowed without writable data (nop)', () => {
      const s = session();
      s.load('hello');
      s.revert('hello');
      throwsErrno(() => s.apply('hello'), 'EINVAL', /unload/, 'apply hello after revert (actions.md APPLY rule 1: "unload and upload it again")');
      s.assertOriginal('extra_version', 'refused re-apply changes nothing');
      assert.equal(s.engine.get('hello').state, 'CHECKED');
      s.unload('hello');
      s.load('hello');
      s.assertJump('extra_version', s.newAddr('hello'), 'a fresh upload applies again');
      s.revert('hello');

      s.load('nop');
      const nopped = s.head('minor_version');
      s.revert('nop');
      s.assertOriginal('minor_version', 'revert nop');
      s.apply('nop');
      assert.equal(hex(s.head('minor_version')), hex(nopped), 'nop re-applied after revert');
    });

    it('NOP patching writes the canonical NOP over the leading jmp of minor_version; revert restores it', () => {
      const s = session();
      s.load('nop');
      const h = s.head('minor_version');
      const o = s.original('minor_version');
      assert.equal(hex(h.subarray(0, off)), hex(o.subarray(0, off)), 'endbr64 (CET) untouched');
      assert.equal(hex(h.subarray(off, off + 2)), '6690', 'the 2-byte canonical NOP (66 90) replaces eb 07');
      assert.equal(hex(h.subarray(off + 2)), hex(o.subarray(off + 2)), 'the rest untouched');
      assert.equal(s.rec('nop').funcs[0]!.newAddr, 0n, 'new_addr 0: NOP patching');
      s.revert('nop');
      s.assertOriginal('minor_version', 'revert nop');
    });

    it('APPLY checks .livepatch.depends against the top (or the base) unless NODEPS', () => {
      const s = session();
      s.upload('bye');
      const err = throwsErrno(() => s.apply('bye'), 'EINVAL', undefined, 'bye on the bare base');
      assert.match(err.message, new RegExp(readBuildId(f('base'))), 'names the base build-id it was checked against');
      s.assertOriginal('extra_version');
      const out = s.apply('bye', { nodeps: true });
      assert.deepEqual(out.hooksSkipped, []);
      s.assertJump('extra_version', s.newAddr('bye'), 'bye with NODEPS');
      // And NODEPS on top of an unrelated stack.
      s.revert('bye');
      s.unload('bye');
      s.load('nop');
      s.upload('hello');
      throwsErrno(() => s.apply('hello'), 'EINVAL', /nop/, 'hello on top of nop (depends on the base, top is nop)');
      s.apply('hello', { nodeps: true });
      assert.deepEqual(s.stack(), ['nop', 'hello']);
    });

    it('REVERT of a payload under the top is EBUSY naming the top; nothing changes', () => {
      const s = session();
      s.load('hello');
      s.load('bye');
      const snap = s.snapshot();
      throwsErrno(() => s.revert('hello'), 'EBUSY', /bye/, 'revert hello under bye');
      assert.equal(s.snapshot(), snap);
      assert.deepEqual(s.stack(), ['hello', 'bye']);
    });

    it('actions in the wrong state or on unknown names change nothing', () => {
      const s = session();
      throwsErrno(() => s.engine.get('nothing'), 'ENOENT');
      for (const cmd of ['APPLY', 'REVERT', 'REPLACE', 'UNLOAD'] as const) {
        throwsErrno(() => s.engine.action('nothing', cmd), 'ENOENT', undefined, `${cmd} of an unknown name`);
      }
      s.load('hello');
      s.upload('replace');
      const snap = s.snapshot();
      throwsErrno(() => s.unload('hello'), 'EINVAL', undefined, 'UNLOAD of an APPLIED payload (actions.md: CHECKED only, else EINVAL)');
      for (const [name, cmd] of [['hello', 'APPLY'], ['hello', 'REPLACE'], ['replace', 'REVERT']] as const) {
        assert.throws(() => s.engine.action(name, cmd), HotstackError, `${cmd} ${name} in the wrong state throws`);
      }
      assert.equal(s.snapshot(), snap, 'nothing changed');
      assert.deepEqual(s.stack(), ['hello']);
      assert.equal(s.engine.get('replace').state, 'CHECKED');
    });

    it('no_base_id: upload EINVAL, nothing left loaded', () => {
      const s = session();
      s.load('hello');
      const snap = s.snapshot();
      throwsErrno(() => s.upload('no_base_id'), 'EINVAL', /xen_depends/, 'upload no_base_id');
      assert.deepEqual(s.names(), ['hello'], 'nothing left loaded');
      assert.equal(s.snapshot(), snap);
      s.upload('nop'); // the engine is still usable
    });

    it('expect applies (the old code matches); expect_fail is EINVAL and changes nothing', () => {
      const s = session();
      s.load('expect');
      s.assertJump('extra_version', s.newAddr('expect'), 'expect');
      assert.equal(s.returnedString(s.newAddr('expect')), 'Expected World');
      s.revert('expect');
      s.unload('expect');

      s.upload('expect_fail');
      throwsErrno(() => s.apply('expect_fail'), 'EINVAL', /dead?beef|expect/i, 'apply expect_fail');
      s.assertOriginal('extra_version', 'expect_fail changes nothing');
      assert.equal(s.engine.get('expect_fail').state, 'CHECKED');
    });

    it('expectations are checked against the live bytes: expect on top of hello (NODEPS) is EINVAL', () => {
      const s = session();
      s.load('hello');
      s.upload('expect');
      const snap = s.snapshot();
      throwsErrno(() => s.apply('expect', { nodeps: true }), 'EINVAL', undefined, 'expect over hello\'s jump');
      assert.equal(s.snapshot(), snap);
    });

    it('expectation field rules at apply: reserved bits EINVAL, len > old_size ERANGE, by-name old_addr is checked at the resolved address', () => {
      const funcsOff = (p: string) => new PayloadElf(readFileSync(p)).section('.livepatch.funcs').offset;
      // Reserved bits 6-7 set (payload-format.md: reserved bits zero, EINVAL).
      {
        const s = session();
        const p = f('expect');
        const bytes = modify(p, (e) => e.u8(funcsOff(p) + FUNC.expectFlags, readFileSync(p)[funcsOff(p) + FUNC.expectFlags]! | 0x40));
        s.engine.upload('expect', bytes);
        throwsErrno(() => s.apply('expect'), 'EINVAL', /reserved/, 'expect with reserved bits');
        s.assertOriginal('extra_version');
      }
      // len 31 > old_size of minor_version (payload-format.md: old_size >= len, ERANGE).
      {
        const s = session();
        const p = f('nop');
        const bytes = modify(p, (e) => e.u8(funcsOff(p) + FUNC.expectFlags, 1 | (31 << 1)));
        assert.ok(symbolInfo(f('base'), 'minor_version').size < 31);
        s.engine.upload('nop', bytes);
        throwsErrno(() => s.apply('nop'), 'ERANGE', undefined, 'expectation longer than old_size');
        s.assertOriginal('minor_version');
      }
      // replace has old_addr 0: its expectation is checked at the resolved address.
      for (const good of [true, false]) {
        const s = session();
        const p = f('replace');
        const want = s.original('extra_version', 8);
        if (!good) want[7] ^= 0xff;
        const bytes = modify(p, (e) => {
          e.u8(funcsOff(p) + FUNC.expectFlags, 1 | (8 << 1));
          for (let i = 0; i < 8; i++) e.u8(funcsOff(p) + FUNC.expectData + i, want[i]!);
        });
        s.engine.upload('replace', bytes);
        if (good) {
          s.apply('replace');
          s.assertJump('extra_version', s.newAddr('replace'), 'replace with a true expectation');
        } else {
          throwsErrno(() => s.apply('replace'), 'EINVAL', undefined, 'replace with a false expectation');
          s.assertOriginal('extra_version');
        }
      }
    });

    it('prepost: pre/post hooks are reported as skipped offline; REPLACE is EOPNOTSUPP with it loaded or as the replacement', () => {
      const s = session();
      s.upload('prepost');
      const a = s.apply('prepost');
      assert.deepEqual(a.hooksSkipped, ['preapply', 'postapply'], 'hooks of apply, in order');
      assert.deepEqual(a.hooksCalled, []);
      s.assertJump('extra_version', s.newAddr('prepost'), 'prepost applied');
      s.upload('replace');
      const snap = s.snapshot();
      throwsErrno(() => s.replace('replace'), 'EOPNOTSUPP', /prepost/, 'REPLACE with prepost applied');
      assert.equal(s.snapshot(), snap);
      assert.deepEqual(s.stack(), ['prepost']);
      const r = s.revert('prepost');
      assert.deepEqual(r.hooksSkipped, ['prerevert', 'postrevert'], 'hooks of revert, in order');
      s.assertOriginal('extra_version', 'revert prepost');
      // prepost itself as the replacement.
      throwsErrno(() => s.replace('prepost'), 'EOPNOTSUPP', /prepost/, 'REPLACE prepost (vetoing hooks)');
      s.assertOriginal('extra_version');
      assert.deepEqual(s.stack(), []);
    });

    it('prepost_fail: offline the vetoing pre-apply hook cannot run; it is reported as skipped', () => {
      const s = session();
      s.upload('prepost_fail');
      const a = s.apply('prepost_fail');
      assert.deepEqual(a.hooksSkipped, ['preapply', 'postapply']);
      s.assertJump('extra_version', s.newAddr('prepost_fail'), 'prepost_fail');
    });

    it('action: the apply/revert action hooks replace the built-in patching, so offline nothing is written', () => {
      const s = session();
      s.upload('action');
      const a = s.apply('action');
      assert.deepEqual(a.hooksSkipped, ['apply']);
      assert.equal(s.engine.get('action').state, 'APPLIED');
      s.assertOriginal('extra_version', 'the built-in jump is not written when an apply hook replaces it');
      const r = s.revert('action');
      assert.deepEqual(r.hooksSkipped, ['revert']);
      assert.equal(s.engine.get('action').state, 'CHECKED');
      s.assertOriginal('extra_version');
    });

    it('nofunc: hooks only, no .livepatch.funcs, is a valid payload', () => {
      const s = session();
      const rec = s.upload('nofunc');
      assert.equal(rec.funcs.length, 0);
      assert.deepEqual(s.apply('nofunc').hooksSkipped, ['apply']);
      assert.deepEqual(s.stack(), ['nofunc']);
      assert.deepEqual(s.revert('nofunc').hooksSkipped, ['revert']);
      s.assertOriginal('extra_version');
      s.assertOriginal('minor_version');
    });

    // -----------------------------------------------------------------
    // Upload rules.

    it('EEXIST by name and by build-id (the same file under two names)', () => {
      const s = session();
      s.upload('hello');
      throwsErrno(() => s.upload('hello'), 'EEXIST', undefined, 'same name');
      throwsErrno(() => s.upload('hello', 'hello2'), 'EEXIST', /hello/, 'same build-id under another name names the loaded one');
      assert.deepEqual(s.names(), ['hello'], 'the refused upload left nothing behind');
      s.apply('hello');
      throwsErrno(() => s.upload('hello', 'hello3'), 'EEXIST', undefined, 'same build-id while applied');
    });

    it('payload names are 1..127 characters', () => {
      const s = session();
      const bytes = readFileSync(f('nop'));
      throwsErrno(() => s.engine.upload('', bytes), 'EINVAL', undefined, 'empty name');
      throwsErrno(() => s.engine.upload('n'.repeat(128), bytes), 'EINVAL', undefined, '128 characters');
      s.engine.upload('n'.repeat(127), bytes);
      assert.deepEqual(s.names(), ['n'.repeat(127)]);
    });

    it('ENODATA when the base image has no build-id', () => {
      const noid = extra.noid_base!;
      const s = new Session(noid, f);
      assert.equal(s.target.base.buildId, null, 'the copy really has no build-id');
      throwsErrno(() => s.upload('hello'), 'ENODATA', undefined, 'upload against a base without build-id');
      assert.deepEqual(s.names(), []);
    });

    it('a payload built for another base is EINVAL, naming the build-ids', () => {
      const other = VARIANTS.find((x) => x !== v)!;
      const s = session();
      const bytes = readFileSync(files[other.prefix + 'hello']!);
      const err = throwsErrno(() => s.engine.upload('hello', bytes), 'EINVAL', undefined, `${other.dir} hello on the ${v.dir} base`);
      assert.match(err.message, new RegExp(readBuildId(files[other.prefix + 'hello']!, '.livepatch.xen_depends')), 'names the build-id the payload wants');
      assert.deepEqual(s.names(), []);
    });

    it('old_addr 0 is resolved by name among the base\'s symbols (replace)', () => {
      const s = session();
      s.upload('replace');
      assert.equal(s.rec('replace').funcs[0]!.oldAddr, s.addr('extra_version'));
    });

    it('FILE#NAME resolves a static of the base (helper calls base.c#base_helper)', () => {
      const s = session();
      s.load('helper');
      const fn = s.newAddr('helper');
      s.assertJump('minor_version', fn, 'helper');
      let at = s.read(fn, 4).equals(Buffer.from([0xf3, 0x0f, 0x1e, 0xfa])) ? fn + 4n : fn;
      assert.equal(hex(s.read(at, 5)), 'bf06000000', 'mov $6,%edi');
      at += 5n;
      assert.equal(s.branchTarget(at), symbolInfo(f('base'), 'base_helper').address, 'the tail call reaches the base\'s static base_helper');
    });

    it('undefined symbols resolve against an earlier payload\'s exports (export/import); import alone is ENOENT', () => {
      const s = session();
      throwsErrno(() => s.upload('import'), 'ENOENT', /export_shared_greeting/, 'import without export');
      assert.deepEqual(s.names(), [], 'nothing left behind');
      s.load('export');
      const syms = s.rec('export').symbols.map((x) => x.name);
      assert.ok(syms.includes('export_shared_greeting'), `export_shared_greeting is exported: ${syms}`);
      assert.ok(!syms.includes('export_minor_version'), 'the overriding symbol (a new_addr) is not exported');
      s.load('import');
      const greet = s.rec('export').symbols.find((x) => x.name === 'export_shared_greeting')!.addr;
      const fn = s.newAddr('import');
      s.assertJump('extra_version', fn, 'import');
      s.assertJump('minor_version', s.newAddr('export'), 'export');
      const body = s.read(fn, 4).equals(Buffer.from([0xf3, 0x0f, 0x1e, 0xfa])) ? fn + 4n : fn;
      assert.equal(s.branchTarget(body), greet, 'import\'s tail call reaches export_shared_greeting in the export payload');
      assert.equal(s.returnedString(greet), 'Shared World');
      assert.deepEqual(s.stack(), ['export', 'import']);
    });

    it('exports: every defined, allocated, named symbol except .L* in merge sections and the overriding new_addr symbols', () => {
      const s = session();
      const rec = s.upload('hello');
      const elf = new PayloadElf(readFileSync(f('hello')));
      const want = elf.symbols.filter((y) => {
        const sec = elf.sections[y.shndx];
        if (y.shndx === 0 || y.shndx >= elf.shnum || !sec) return false;
        if ((sec.flags & SHF.ALLOC) === 0n || y.name === '') return false;
        if ((sec.flags & 0x10n) !== 0n && y.name.startsWith('.L')) return false;
        return y.name !== 'hello_extra_version';
      }).map((y) => y.name).sort();
      assert.ok(want.includes('hello_load') && want.includes('hello_cnt'), 'statics are exported too (Xen exports them)');
      assert.deepEqual(rec.symbols.map((y) => y.name).sort(), want);
    });

    it('EEXIST when a payload exports a name that a loaded payload already exports', () => {
      const s = session();
      s.load('export');
      throwsErrno(() => s.upload('export_again'), 'EEXIST', /export_shared_greeting/, 'export_again after export');
      assert.deepEqual(s.names(), ['export']);
      const t = session();
      t.upload('export_again'); // alone it is fine
    });

    it('dup_global: a payload symbol named like a base global is EEXIST', () => {
      const s = session();
      throwsErrno(() => s.upload('dup_global'), 'EEXIST', /base_counter/, 'dup_global');
      assert.deepEqual(s.names(), []);
    });

    it('NOP limits: new_size <= 31 (EOPNOTSUPP) and old_size >= new_size (EINVAL)', () => {
      throwsErrno(() => session().upload('nop_too_big'), 'EOPNOTSUPP', undefined, 'nop_too_big (new_size 32)');
      const p = f('nop');
      const fo = new PayloadElf(readFileSync(p)).section('.livepatch.funcs').offset;
      const ns = nopSize(f('base'));
      const small = modify(p, (e) => e.u32(fo + FUNC.oldSize, ns - 1));
      throwsErrno(() => session().engine.upload('nop', small), 'EINVAL', undefined, `NOP of ${ns} bytes with old_size ${ns - 1}`);
      const equal = modify(p, (e) => e.u32(fo + FUNC.oldSize, ns));
      session().engine.upload('nop', equal);
      // 31 bytes with old_size 31: the largest NOP patch.
      const s = session();
      s.engine.upload('nop', modify(p, (e) => e.u32(fo + FUNC.newSize, 31).u32(fo + FUNC.oldSize, 31)));
      const before = s.head('minor_version', 40);
      s.apply('nop');
      const after = s.head('minor_version', 40);
      assert.equal(hex(after.subarray(0, off)), hex(before.subarray(0, off)), 'endbr64 intact');
      assert.ok(isNopSequence(after.subarray(off, 31)), `bytes ${off}..31 are canonical NOPs: ${hex(after.subarray(off, 31))}`);
      assert.equal(hex(after.subarray(31)), hex(before.subarray(31)), 'nothing past new_size is touched');
      s.revert('nop');
      assert.equal(hex(s.head('minor_version', 40)), hex(before), 'revert restores all 31 bytes');
    });

    it('old_size rules: 0 EINVAL; a jump needs 5 bytes, 9 after endbr64 (EINVAL)', () => {
      throwsErrno(() => session().upload('old_size_zero'), 'EINVAL', undefined, 'old_size_zero');
      throwsErrno(() => session().upload('old_size_small'), 'EINVAL', undefined, 'old_size_small (4)');
      const p = f('hello');
      const fo = new PayloadElf(readFileSync(p)).section('.livepatch.funcs').offset;
      for (const size of [5, 8, 9]) {
        const bytes = modify(p, (e) => e.u32(fo + FUNC.oldSize, size));
        const needed = 5 + off;
        if (size >= needed) {
          const s = session();
          s.engine.upload('hello', bytes);
          s.apply('hello');
          s.assertJump('extra_version', s.newAddr('hello'), `old_size ${size}`);
        } else {
          throwsErrno(() => session().engine.upload('hello', bytes), 'EINVAL', undefined, `old_size ${size} (needs ${needed})`);
        }
      }
    });

    it('an unknown function to patch is ENOENT; livepatch_func version 1 is EOPNOTSUPP', () => {
      throwsErrno(() => session().upload('unknown_func'), 'ENOENT', /no_such_function/, 'unknown_func');
      throwsErrno(() => session().upload('bad_version'), 'EOPNOTSUPP', undefined, 'bad_version');
    });

    it('a replacement beyond a rel32 displacement is EOVERFLOW', () => {
      const p = f('hello');
      const elf = new PayloadElf(readFileSync(p));
      const r = elf.relocAt('.livepatch.funcs', FUNC.newAddr);
      const bytes = elf.edit((e) => e.rela(r, { addend: r.addend + (1n << 33n) }));
      const s = session();
      throwsErrno(() => s.engine.upload('hello', bytes), 'EOVERFLOW', undefined, 'new_addr 8 GiB away');
      assert.deepEqual(s.names(), []);
    });

    // -----------------------------------------------------------------
    // `hotstack check` (the real command line).

    describe('hotstack check', () => {
      it('human output: one line per step and the final stack; exit 0', () => {
        const r = cli(['check', '--image', f('base'), f('hello'), f('bye')]);
        assertNoStackTrace(r, 'check');
        assert.equal(r.status, 0, `exit 0 when every step is ok; stderr: ${r.stderr}`);
        const lines = r.stdout.trimEnd().split('\n');
        assert.match(lines[0]!, new RegExp(`^Image .*base \\(build-id ${readBuildId(f('base'))}\\)$`));
        assert.match(r.stdout, /upload\s+hello\s+ok/);
        assert.match(r.stdout, /apply\s+hello\s+ok: applied \(hooks not run offline: load, load\)/);
        assert.match(r.stdout, /apply\s+bye\s+ok: applied/);
        assert.equal(lines[lines.length - 1], 'Stack (bottom to top): hello -> bye');
      });

      it('--json: exactly one JSON object with image, steps and stack', () => {
        const r = cli(['check', '--image', f('base'), '--json', f('hello'), f('bye')]);
        assertNoStackTrace(r, 'check --json');
        assert.equal(r.status, 0);
        const j = parseCheckJson(r);
        assert.deepEqual(j.image, { path: f('base'), buildId: readBuildId(f('base')) });
        assert.deepEqual(j.steps.map((x) => [x.name, x.action, x.ok]), [['hello', 'upload', true], ['hello', 'apply', true], ['bye', 'upload', true], ['bye', 'apply', true]]);
        for (const st of j.steps) {
          assert.equal(st.errno, null);
          assert.equal(st.code, 0);
        }
        assert.equal(j.steps[0]!.file, f('hello'));
        // Offline no hook runs: each step names the hooks it skipped (hello's two load hooks on apply; bye has none).
        assert.deepEqual(j.steps.map((x) => [x.name, x.action, x.hooksSkipped]), [
          ['hello', 'upload', []], ['hello', 'apply', ['load', 'load']], ['bye', 'upload', []], ['bye', 'apply', []],
        ]);
        assert.deepEqual(j.stack, ['hello', 'bye']);
      });

      it('a failed apply is unloaded again and the run continues; exit 1', () => {
        const r = cli(['check', '--image', f('base'), '--json', f('bye'), f('hello'), f('bye')]);
        assertNoStackTrace(r, 'check');
        assert.equal(r.status, 1, 'exit 1 when a step failed');
        const j = parseCheckJson(r);
        assert.deepEqual(j.steps.map((x) => [x.name, x.action, x.ok, x.errno]), [
          ['bye', 'upload', true, null], ['bye', 'apply', false, 'EINVAL'],
          ['hello', 'upload', true, null], ['hello', 'apply', true, null],
          ['bye', 'upload', true, null], ['bye', 'apply', true, null],
        ], 'the second upload of bye works only if the failed one was unloaded');
        assert.equal(j.steps[1]!.code, -22);
        assert.match(j.steps[1]!.message, new RegExp(readBuildId(f('base'))), 'the failed apply names what it was checked against');
        assert.deepEqual(j.stack, ['hello', 'bye']);
        const h = cli(['check', '--image', f('base'), f('bye'), f('hello')]);
        assert.equal(h.status, 1);
        assert.match(h.stdout, /apply\s+bye\s+FAILED EINVAL \(-22\): /);
        assert.match(h.stdout, /Stack \(bottom to top\): hello\n$/);
      });

      it('a failed upload is reported and the run continues', () => {
        const r = cli(['check', '--image', f('base'), '--json', f('no_base_id'), f('hello'), '/nonexistent/x.livepatch']);
        assertNoStackTrace(r, 'check');
        assert.equal(r.status, 1);
        const j = parseCheckJson(r);
        assert.deepEqual(j.steps.map((x) => [x.name, x.action, x.ok, x.errno]), [
          ['no_base_id', 'upload', false, 'EINVAL'], ['hello', 'upload', true, null], ['hello', 'apply', true, null],
          ['x', 'upload', false, 'ENOENT'],
        ]);
        assert.deepEqual(j.stack, ['hello']);
      });

      it('--replace: the stack is replaced by the cumulative payload', () => {
        const r = cli(['check', '--image', f('base'), '--json', f('hello'), f('bye'), '--replace', f('replace')]);
        assertNoStackTrace(r, 'check --replace');
        assert.equal(r.status, 0, r.stdout + r.stderr);
        const j = parseCheckJson(r);
        const last = j.steps[j.steps.length - 1]!;
        assert.deepEqual([last.name, last.action, last.ok], ['replace', 'replace', true]);
        assert.equal(last.hooksSkipped.filter((x) => x === 'unload').length, 3, 'hello\'s unload hooks are skipped offline');
        assert.deepEqual(j.stack, ['replace']);
        const h = cli(['check', '--image', f('base'), f('hello'), '--replace', f('replace')]);
        assert.equal(h.status, 0);
        assert.match(h.stdout, /replace\s+replace\s+ok/);
        assert.match(h.stdout, /Stack \(bottom to top\): replace\n$/);
      });

      it('--replace that fails leaves the stack: vetoing hooks EOPNOTSUPP, false expectation EINVAL; exit 1', () => {
        const a = parseCheckJson(cli(['check', '--image', f('base'), '--json', f('prepost'), '--replace', f('replace')]));
        const la = a.steps[a.steps.length - 1]!;
        assert.deepEqual([la.action, la.ok, la.errno, la.code], ['replace', false, 'EOPNOTSUPP', -95]);
        assert.deepEqual(a.stack, ['prepost']);
        const r = cli(['check', '--image', f('base'), '--json', f('hello'), f('bye'), '--replace', f('expect_fail')]);
        assert.equal(r.status, 1);
        const b = parseCheckJson(r);
        const lb = b.steps[b.steps.length - 1]!;
        assert.deepEqual([lb.action, lb.ok, lb.errno], ['replace', false, 'EINVAL']);
        assert.deepEqual(b.stack, ['hello', 'bye']);
      });

      it('--nodeps applies without the dependency check', () => {
        const r = cli(['check', '--image', f('base'), '--nodeps', '--json', f('bye')]);
        assert.equal(r.status, 0, r.stdout + r.stderr);
        assert.deepEqual(parseCheckJson(r).stack, ['bye']);
      });

      it('a base without build-id: buildId null, every upload ENODATA', () => {
        const r = cli(['check', '--image', extra.noid_base!, '--json', f('hello')]);
        assertNoStackTrace(r, 'check');
        assert.equal(r.status, 1);
        const j = parseCheckJson(r);
        assert.equal(j.image.buildId, null);
        assert.deepEqual(j.steps.map((x) => [x.action, x.ok, x.errno, x.code]), [['upload', false, 'ENODATA', -61]]);
        const h = cli(['check', '--image', extra.noid_base!, f('hello')]);
        assert.match(h.stdout, /build-id none/);
      });

      it('an unusable image is one clean error line, exit 1', () => {
        for (const image of [f('hello'), '/nonexistent/base']) {
          const r = cli(['check', '--image', image, f('hello')]);
          assertNoStackTrace(r, `check --image ${image}`);
          assert.equal(r.status, 1, `exit 1 for --image ${image}`);
          assert.match(r.stderr, /Error \d+: E[A-Z0-9]+: /, `stderr: ${r.stderr}`);
        }
      });
    });
  });
}
