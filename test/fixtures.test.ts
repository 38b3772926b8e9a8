/**
 * Checks the fixtures themselves, with binutils only: if a payload were
 * malformed here, an engine test failing on it would blame the engine.
 */
import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import {
  buildAll, EXPECT_LEN, fileOffset, functionBytes, listSections, nopSize, PAYLOADS, readBuildId, readSection,
  run, startBase, symbolInfo, VARIANTS, type BaseProcess,
} from './helpers/toolchain.js';

const FUNC_SIZE = 104;
const SINGLE_HOOKS = ['preapply', 'postapply', 'prerevert', 'postrevert', 'apply', 'revert'];
const ENDBR64 = 'f30f1efa';

/** Which fixture's build-id each payload's .livepatch.depends must hold. */
const DEPENDS_ON: Record<string, string> = { bye: 'hello', import: 'export' };

function elfType(path: string): string {
  return /Type:\s+(\S+)/.exec(run('readelf', ['-hW', path]))?.[1] ?? '?';
}

/** One struct livepatch_func of a payload, as stored (before relocation). */
function funcRecord(path: string, index = 0) {
  const b = readSection(path, '.livepatch.funcs').subarray(index * FUNC_SIZE, (index + 1) * FUNC_SIZE);
  return {
    newSize: b.readUInt32LE(24), oldSize: b.readUInt32LE(28), version: b[32]!,
    opaqueZero: b.subarray(33, 72).every((x) => x === 0),
    expectFlags: b[72]!, expectData: b.subarray(73, 104),
  };
}

/** Offsets in .livepatch.funcs that carry a relocation (name, new_addr, old_addr pointers). */
function relocatedOffsets(path: string): number[] {
  const text = run('readelf', ['-rW', path]);
  const part = text.split(/\n(?=Relocation section )/).find((s) => s.startsWith("Relocation section '.rela.livepatch.funcs'"));
  return (part ?? '').split('\n').filter((l) => /R_X86_64_/.test(l)).map((l) => parseInt(l.trim().split(/\s+/)[0]!, 16));
}

describe('fixtures', () => {
  let files: Record<string, string>;
  before(() => { files = buildAll(); });

  it('builds every base and payload of every variant', () => {
    for (const v of VARIANTS) {
      assert.ok(files[v.prefix + 'base'], `${v.prefix}base`);
      for (const p of PAYLOADS) assert.ok(files[v.prefix + p.name], v.prefix + p.name);
    }
    assert.equal(buildAll(), files, 'cached per process');
  });

  for (const v of VARIANTS) {
    describe(`variant ${v.dir}`, () => {
      const f = (name: string) => files[v.prefix + name]!;

      it('base is an executable with symbols and a build-id', () => {
        assert.equal(elfType(f('base')), v.pie ? 'DYN' : 'EXEC');
        assert.match(readBuildId(f('base')), /^[0-9a-f]{40}$/);
        for (const fn of ['extra_version', 'minor_version']) assert.ok(symbolInfo(f('base'), fn).size >= 16, fn);
        const head = functionBytes(f('base'), 'extra_version', 4).toString('hex');
        assert.equal(head === ENDBR64, v.cfProtection, `extra_version starts with ${head}`);
        // The static helper is named base.c#base_helper: its STT_FILE is base.c.
        const syms = run('readelf', ['-sW', f('base')]).split('\n').map((l) => l.trim().split(/\s+/));
        const at = syms.findIndex((s) => s[7] === 'base_helper' && s[4] === 'LOCAL');
        const file = syms.slice(0, at).reverse().find((s) => s[3] === 'FILE');
        assert.equal(file?.[7], 'base.c');
      });

      it('every payload has the sections and notes it is meant to have', () => {
        const baseId = readBuildId(f('base'));
        const ownIds = new Set<string>();
        for (const p of PAYLOADS) {
          const path = f(p.name);
          const secs = listSections(path);
          const sec = (name: string) => secs.find((s) => s.name === name);
          assert.equal(elfType(path), 'REL', p.name);

          const own = readBuildId(path);
          assert.ok(!ownIds.has(own), `${p.name}: build-id not unique`);
          ownIds.add(own);
          const dep = DEPENDS_ON[p.name];
          assert.equal(readBuildId(path, '.livepatch.depends'), dep ? readBuildId(f(dep)) : baseId, `${p.name} depends`);
          if (p.name === 'no_base_id') assert.equal(sec('.livepatch.xen_depends'), undefined);
          else assert.equal(readBuildId(path, '.livepatch.xen_depends'), baseId, `${p.name} xen_depends`);

          const funcs = sec('.livepatch.funcs');
          if (p.name === 'nofunc') assert.equal(funcs, undefined);
          else assert.ok(funcs && funcs.size > 0 && funcs.size % FUNC_SIZE === 0, `${p.name}: .livepatch.funcs ${funcs?.size}`);
          for (const s of secs.filter((s) => s.name.startsWith('.livepatch.hooks.'))) {
            const single = SINGLE_HOOKS.includes(s.name.slice('.livepatch.hooks.'.length));
            assert.ok(single ? s.size === 8 : s.size > 0 && s.size % 8 === 0, `${p.name}: ${s.name} is ${s.size} bytes`);
          }
          for (const s of secs) assert.ok(!(s.flags.includes('W') && s.flags.includes('X')), `${p.name}: ${s.name} is W+X`);
          for (let i = 0; i < (funcs?.size ?? 0) / FUNC_SIZE; i++) {
            assert.ok(funcRecord(path, i).opaqueZero, `${p.name}: opaque area not zero`);
          }
        }
      });

      it('hello-style records carry the measured sizes and a relocated old_addr', () => {
        const rec = funcRecord(f('hello'));
        assert.equal(rec.version, 2);
        assert.equal(rec.oldSize, symbolInfo(f('base'), 'extra_version').size);
        assert.equal(rec.newSize, symbolInfo(f('hello'), 'hello_extra_version').size);
        assert.deepEqual(relocatedOffsets(f('hello')), [0, 8, 16]);
        assert.deepEqual(relocatedOffsets(f('replace')), [0, 8], 'replace: old_addr 0, by name');
        assert.ok(listSections(f('hello')).some((s) => s.type === 'NOBITS' && s.size > 0), 'hello has .bss');
        // gcc does not keep the source order of the two records (toplevel reorder).
        const sizes = (fns: string[], elf: string) => fns.map((fn) => symbolInfo(elf, fn).size).sort((a, b) => a - b);
        const two = [funcRecord(f('twofunc'), 0), funcRecord(f('twofunc'), 1)];
        assert.deepEqual(two.map((r) => r.oldSize).sort((a, b) => a - b), sizes(['extra_version', 'minor_version'], f('base')));
        assert.deepEqual(two.map((r) => r.newSize).sort((a, b) => a - b), sizes(['twofunc_extra_version', 'twofunc_minor_version'], f('twofunc')));
      });

      it('nop has no writable data but .livepatch.funcs and NOPs the leading jmp', () => {
        const writable = listSections(f('nop')).filter((s) => s.flags.includes('W') && s.size > 0).map((s) => s.name);
        assert.deepEqual(writable, ['.livepatch.funcs']);
        const rec = funcRecord(f('nop'));
        assert.equal(rec.newSize, nopSize(f('base')));
        assert.equal(rec.newSize, v.cfProtection ? 6 : 2);
        assert.deepEqual(relocatedOffsets(f('nop')), [0, 16], 'nop: new_addr 0');
      });

      it('NOPing what nop says makes minor_version answer 43 (checked on a copy)', async (t) => {
        const dir = mkdtempSync(join(tmpdir(), 'hotstack-nop-'));
        t.after(() => rmSync(dir, { recursive: true, force: true }));
        const copy = join(dir, 'base');
        copyFileSync(f('base'), copy);
        const image = readFileSync(copy);
        const at = fileOffset(copy, 'minor_version');
        const skip = v.cfProtection ? 4 : 0; // the NOPs go after endbr64
        image.fill(0x90, at + skip, at + funcRecord(f('nop')).newSize);
        writeFileSync(copy, image);
        const proc = await startBase(copy);
        try {
          assert.equal(await proc.ask('m'), '43');
          assert.equal(await proc.ask('v'), '-unstable');
        } finally {
          await proc.stop();
        }
      });

      it('expect carries the real bytes of extra_version, expect_fail other ones', () => {
        const real = functionBytes(f('base'), 'extra_version', EXPECT_LEN);
        const ok = funcRecord(f('expect'));
        assert.equal(ok.expectFlags, 1 | (EXPECT_LEN << 1), 'enabled, len 8, rsv 0');
        assert.deepEqual(ok.expectData.subarray(0, EXPECT_LEN), real);
        const bad = funcRecord(f('expect_fail'));
        assert.equal(bad.expectFlags, 1 | (EXPECT_LEN << 1));
        assert.notDeepEqual(bad.expectData.subarray(0, EXPECT_LEN), real);
      });

      it('negative fixtures hold the values they are named after', () => {
        assert.equal(funcRecord(f('bad_version')).version, 1);
        assert.equal(funcRecord(f('old_size_zero')).oldSize, 0);
        assert.equal(funcRecord(f('old_size_small')).oldSize, 4);
        assert.equal(funcRecord(f('nop_too_big')).newSize, 32);
        assert.deepEqual(relocatedOffsets(f('unknown_func')), [0, 8]);
        assert.match(run('nm', ['--defined-only', f('dup_global')]), / [DdBb] base_counter$/m);
        assert.match(run('nm', ['-u', f('helper')]), /^\s+U base\.c#base_helper$/m);
        assert.match(run('nm', ['-u', f('import')]), /^\s+U export_shared_greeting$/m);
        assert.match(run('nm', ['--defined-only', f('export')]), / T export_shared_greeting$/m);
      });

      describe('running base', () => {
        let base: BaseProcess;
        before(async () => { base = await startBase(f('base')); });
        after(async () => { await base?.stop(); });

        it('answers v, m, b, c, h', async () => {
          assert.ok(base.pid > 0);
          assert.equal(await base.ask('v'), '-unstable');
          assert.equal(await base.ask('m'), '42');
          assert.equal(await base.ask('b'), '1001');
          assert.equal(await base.ask('c'), '2');
          assert.equal(await base.ask('h'), '0');
        });

        it('stops on q', async () => {
          await base.stop();
          assert.equal(base.child.exitCode, 0);
          await assert.rejects(base.ask('v'), /exited/);
        });
      });
    });
  }
});
