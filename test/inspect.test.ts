/**
 * `hotstack inspect FILE [--json]`: what a payload holds, statically,
 * checked against what binutils (readelf, nm, objcopy) say about the same
 * files: build-ids and the depends chain, function records, hooks,
 * metadata and sections.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { before, describe, it } from 'node:test';
import { FUNC, PayloadElf } from './helpers/elfedit.js';
import { assertNoStackTrace, cli, cliMany, type CliResult } from './helpers/engine.js';
import {
  buildAll, EXPECT_LEN, functionBytes, listSections, nopSize, readBuildId, symbolInfo, VARIANTS,
} from './helpers/toolchain.js';
import type { InspectErrorJson, InspectJson } from '../src/cli/json-types.js';

const PAYLOADS = ['hello', 'bye', 'replace', 'nop', 'expect', 'prepost', 'nofunc', 'export', 'import', 'twofunc'];

const esc = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

for (const v of VARIANTS) {
  describe(`hotstack inspect: ${v.dir} fixtures`, () => {
    let files: Record<string, string>;
    const f = (k: string): string => files[v.prefix + k]!;
    const text: Record<string, CliResult> = {};
    const json: Record<string, InspectJson> = {};

    before(() => {
      files = buildAll();
      const res = cliMany(PAYLOADS.flatMap((p) => [['inspect', f(p)], ['inspect', '--json', f(p)]]));
      PAYLOADS.forEach((p, i) => {
        const t = res[2 * i]!;
        const j = res[2 * i + 1]!;
        assertNoStackTrace(t, `inspect ${p}`);
        assertNoStackTrace(j, `inspect --json ${p}`);
        assert.equal(t.status, 0, `inspect ${p} exits 0; stderr: ${t.stderr}`);
        assert.equal(j.status, 0, `inspect --json ${p} exits 0; stderr: ${j.stderr}`);
        assert.equal(t.stderr, '', `inspect ${p} prints nothing on stderr`);
        const lines = j.stdout.trim().split('\n');
        assert.equal(lines.length, 1, `inspect --json ${p} prints exactly one JSON object`);
        text[p] = t;
        json[p] = JSON.parse(lines[0]!) as InspectJson;
      });
    });

    /** The value of a `  key:   value` line of the text output. */
    const field = (p: string, key: string): string => {
      const m = new RegExp(`^  ${esc(key)}:\\s+(.*)$`, 'm').exec(text[p]!.stdout);
      assert.ok(m, `inspect ${p}: a "${key}:" line in\n${text[p]!.stdout}`);
      return m[1]!;
    };

    it('build-ids: each payload\'s own, its depends and its base build-id match the notes (readBuildId)', () => {
      const baseId = readBuildId(f('base'));
      for (const p of PAYLOADS) {
        const j = json[p]!;
        assert.equal(j.file, f(p), `${p}: file`);
        assert.equal(j.buildId, readBuildId(f(p)), `${p}: buildId`);
        assert.equal(j.depends, readBuildId(f(p), '.livepatch.depends'), `${p}: depends`);
        assert.equal(field(p, 'build-id'), j.buildId, `${p}: text build-id`);
        assert.equal(field(p, 'depends'), j.depends, `${p}: text depends`);
        assert.equal(j.baseBuildId, baseId, `${p}: baseBuildId is the base's`);
        assert.equal(field(p, 'base build-id'), baseId, `${p}: text base build-id`);
      }
    });

    it('the depends chain: bye stacks on hello, import on export, the rest on the base', () => {
      const baseId = readBuildId(f('base'));
      assert.equal(json.bye!.depends, json.hello!.buildId, 'bye depends on hello');
      assert.equal(json.import!.depends, json.export!.buildId, 'import depends on export');
      for (const p of ['hello', 'replace', 'nop', 'expect', 'prepost', 'nofunc', 'export', 'twofunc']) {
        assert.equal(json[p]!.depends, baseId, `${p} depends on the base`);
      }
      assert.equal(new Set(PAYLOADS.map((p) => json[p]!.buildId)).size, PAYLOADS.length, 'every payload has its own build-id');
    });

    it('functions: hello is a jump from extra_version to hello_extra_version with nm\'s sizes', () => {
      const j = json.hello!;
      assert.deepEqual(j.funcs, [{
        name: 'extra_version', oldAddr: 'extra_version', newAddr: 'hello_extra_version',
        oldSize: symbolInfo(f('base'), 'extra_version').size, newSize: symbolInfo(f('hello'), 'hello_extra_version').size,
        kind: 'jump', version: 2, expect: null,
      }]);
      assert.equal(field('hello', 'functions'), '1');
      assert.match(text.hello!.stdout, new RegExp(`^    extra_version: old_addr extra_version, old_size ${j.funcs[0]!.oldSize}, jump to hello_extra_version \\(new_size ${j.funcs[0]!.newSize}\\)$`, 'm'));
    });

    it('functions: nop is a NOP patch of minor_version (new_addr 0, new_size the NOP length)', () => {
      const j = json.nop!;
      assert.equal(j.funcs.length, 1);
      const fn = j.funcs[0]!;
      assert.equal(fn.name, 'minor_version');
      assert.equal(fn.oldAddr, 'minor_version');
      assert.equal(fn.kind, 'nop');
      assert.equal(fn.newAddr, '0x0');
      assert.equal(fn.newSize, nopSize(f('base')));
      assert.equal(fn.oldSize, symbolInfo(f('base'), 'minor_version').size);
      assert.match(text.nop!.stdout, new RegExp(`^    minor_version: old_addr minor_version, old_size ${fn.oldSize}, NOP ${fn.newSize} bytes$`, 'm'));
    });

    it('functions: replace has old_addr 0 (resolved by name)', () => {
      const fn = json.replace!.funcs[0]!;
      assert.equal(fn.name, 'extra_version');
      assert.equal(fn.oldAddr, '0x0');
      assert.equal(fn.newAddr, 'replace_extra_version');
      assert.match(text.replace!.stdout, /^    extra_version: old_addr 0 \(by name\), /m);
    });

    it('functions: expect carries the expected bytes of extra_version', () => {
      const fn = json.expect!.funcs[0]!;
      const want = functionBytes(f('base'), 'extra_version', EXPECT_LEN).toString('hex');
      assert.deepEqual(fn.expect, { enabled: true, len: EXPECT_LEN, bytes: want });
      assert.match(text.expect!.stdout, new RegExp(`^      expects ${EXPECT_LEN} bytes: ${want}$`, 'm'));
      assert.equal(json.hello!.funcs[0]!.expect, null, 'no expectation: null');
      assert.doesNotMatch(text.hello!.stdout, /expects/);
    });

    it('functions: twofunc lists both records', () => {
      const names = json.twofunc!.funcs.map((x) => [x.name, x.newAddr]).sort();
      assert.deepEqual(names, [['extra_version', 'twofunc_extra_version'], ['minor_version', 'twofunc_minor_version']]);
      assert.equal(field('twofunc', 'functions'), '2');
    });

    it('hooks: hello\'s load/unload arrays, prepost\'s four pre/post hooks, nofunc\'s action hooks, each naming its function', () => {
      const hooks = (p: string) => Object.fromEntries(json[p]!.hooks.map((h) => [h.kind, h.targets]));
      const names = (targets: string[] | undefined, fns: string[], what: string) => {
        assert.ok(targets, `${what} present`);
        assert.equal(targets.length, fns.length, `${what}: ${fns.length} entries (${targets})`);
        for (const fn of fns) assert.ok(targets.some((t) => new RegExp(`(^|[^A-Za-z0-9_])${fn}($|[^A-Za-z0-9_])`).test(t)), `${what}: one entry names ${fn} (${targets})`);
      };
      const h = hooks('hello');
      assert.deepEqual(Object.keys(h).sort(), ['load', 'unload']);
      names(h.load, ['hello_load', 'hello_hi'], 'hello load hooks');
      names(h.unload, ['hello_unload', 'hello_hi', 'hello_check'], 'hello unload hooks');
      const pp = hooks('prepost');
      assert.deepEqual(Object.keys(pp).sort(), ['postapply', 'postrevert', 'preapply', 'prerevert']);
      names(pp.preapply, ['prepost_pre_apply'], 'prepost preapply');
      names(pp.postapply, ['prepost_post_apply'], 'prepost postapply');
      names(pp.prerevert, ['prepost_pre_revert'], 'prepost prerevert');
      names(pp.postrevert, ['prepost_post_revert'], 'prepost postrevert');
      const nf = hooks('nofunc');
      assert.deepEqual(Object.keys(nf).sort(), ['apply', 'revert']);
      names(nf.apply, ['nofunc_apply'], 'nofunc apply');
      names(nf.revert, ['nofunc_revert'], 'nofunc revert');
      assert.deepEqual(json.nofunc!.funcs, [], 'nofunc has no functions');
      assert.equal(field('nofunc', 'functions'), '0');
      assert.deepEqual(json.nop!.hooks, []);
      assert.equal(field('nop', 'hooks'), 'none');
      assert.match(field('hello', 'hooks'), /^load \(.+\); unload \(.+\)$|^unload \(.+\); load \(.+\)$/);
    });

    it('metadata: hello\'s .modinfo, none elsewhere', () => {
      assert.deepEqual(json.hello!.metadata, ['fixture=hello']);
      assert.equal(field('hello', 'metadata'), 'fixture=hello');
      assert.deepEqual(json.nop!.metadata, []);
      assert.equal(field('nop', 'metadata'), 'none');
    });

    it('sections: the allocated sections with readelf\'s sizes and A/W/X flags', () => {
      for (const p of ['hello', 'nop', 'expect', 'prepost', 'nofunc']) {
        const want = listSections(f(p)).filter((s) => s.flags.includes('A'))
          .map((s) => ({ name: s.name, size: s.size, flags: `A${s.flags.includes('W') ? 'W' : ''}${s.flags.includes('X') ? 'X' : ''}` }));
        assert.deepEqual(json[p]!.sections, want, `${p}: sections`);
        for (const s of want) {
          assert.match(text[p]!.stdout, new RegExp(`^    ${esc(s.name)}\\s+${s.size}\\s+${s.flags}$`, 'm'), `${p}: text line for ${s.name}`);
        }
      }
      const names = json.hello!.sections.map((s) => s.name);
      for (const n of ['.livepatch.funcs', '.livepatch.depends', '.livepatch.xen_depends', '.note.gnu.build-id', '.livepatch.hooks.load', '.modinfo']) {
        assert.ok(names.includes(n), `hello lists ${n}`);
      }
      assert.ok(!names.includes('.symtab') && !names.includes('.rela.livepatch.funcs'), 'non-allocated sections are left out');
    });

    it('the text report starts with the file name and has every part', () => {
      const lines = text.hello!.stdout.split('\n');
      assert.equal(lines[0], f('hello'));
      for (const k of ['build-id', 'depends', 'base build-id', 'functions', 'hooks', 'metadata']) field('hello', k);
      assert.ok(lines.includes('  sections:'));
    });

    it('payloads invalid without a base give their errno: bad_version EOPNOTSUPP, old_size_zero EINVAL, nop_too_big EOPNOTSUPP, no_base_id EINVAL', () => {
      // The file offset each error names: the record field to blame; none for a missing section.
      const field = (p: string, at: number): number => new PayloadElf(readFileSync(f(p))).section('.livepatch.funcs').offset + at;
      const cases: [string, string, number | null][] = [
        ['bad_version', 'EOPNOTSUPP', field('bad_version', FUNC.version)], ['old_size_zero', 'EINVAL', field('old_size_zero', FUNC.oldSize)],
        ['nop_too_big', 'EOPNOTSUPP', field('nop_too_big', FUNC.newSize)], ['no_base_id', 'EINVAL', null],
      ];
      const res = cliMany(cases.flatMap(([p]) => [['inspect', f(p)], ['inspect', '--json', f(p)]]));
      cases.forEach(([p, errno, offset], i) => {
        const t = res[2 * i]!;
        const j = res[2 * i + 1]!;
        assertNoStackTrace(t, p);
        assert.equal(t.status, 1, `${p}: exit 1`);
        assert.equal(t.stdout, '', `${p}: nothing on stdout`);
        assert.match(t.stderr, new RegExp(`^${esc(f(p))}: invalid payload: Error \\d+: ${errno}: `), `${p}: stderr ${t.stderr}`);
        assert.equal(j.status, 1, `${p}: --json exit 1`);
        const o = JSON.parse(j.stdout.trim()) as InspectErrorJson;
        assert.equal(o.file, f(p));
        assert.equal(o.error.errno, errno);
        assert.equal(o.error.offset, offset, `${p}: the error's file offset`);
        if (offset !== null) assert.ok(t.stderr.includes(`(at file offset 0x${offset.toString(16)})`), `${p}: stderr names the offset: ${t.stderr}`);
      });
      assert.match(res[6]!.stderr, /\.livepatch\.xen_depends/, 'no_base_id: the error names the missing section');
    });

    it('bin/hotstack inspect (a real process) agrees with the in-process runs', () => {
      const t = cli(['inspect', f('hello')]);
      assert.equal(t.status, 0);
      assert.equal(t.stdout, text.hello!.stdout);
      const j = cli(['inspect', '--json', f('nop')]);
      assert.equal(j.status, 0);
      assert.deepEqual(JSON.parse(j.stdout), json.nop);
      const bad = cli(['inspect', '/nonexistent/file.livepatch']);
      assertNoStackTrace(bad, 'inspect of a missing file');
      assert.equal(bad.status, 1);
      assert.match(bad.stderr, /Error 2: ENOENT: /);
    });
  });
}
