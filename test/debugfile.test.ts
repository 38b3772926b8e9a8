/**
 * Stripped bases and their separate debug files (src/elf/debugfile.ts),
 * through the real CLI: a program built with `gcc -O2 -g -Wl,--build-id`,
 * its debug info split off with `objcopy --only-keep-debug`, the program
 * stripped with `strip --strip-all` and given a `.gnu_debuglink`.
 *
 * Its static function is only named in the debug file's `.symtab`: `build`
 * fails with a hint without one, works with --debug-file, the build-id
 * directory (HOTSTACK_DEBUG_ROOT) or .gnu_debuglink, and refuses a debug
 * file of another build; `check --image` takes --debug-file; a live
 * process (whose file was deleted) is patched through the build-id
 * directory.
 */
import assert from 'node:assert/strict';
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Cli, Processes, expectCli, type CliResult } from './helpers/live.js';
import { functionBytes, listSections, readBuildId, run, symbolInfo } from './helpers/toolchain.js';
import type { InspectJson } from '../src/cli/json-types.js';

const PROG = `
#include <stdio.h>

/* Read in both functions so each is long enough (>= 5 bytes) to take a jump. */
volatile int bias;

/* Static: only .symtab names it, and strip removes that. noipa: patchable. */
static __attribute__((noipa)) int secret_value(int x)
{
    return x * 3 + 1 + bias;
}

/* Exported (-rdynamic): .dynsym keeps it after strip. */
__attribute__((noipa)) int exported_value(int x)
{
    return x + 7 + OFFSET + bias;
}

int main(void)
{
    char line[64];

    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\\n");
    fflush(stdout);
    while (fgets(line, sizeof(line), stdin)) {
        switch (line[0]) {
        case 's': printf("%d\\n", secret_value(1)); break;
        case 'e': printf("%d\\n", exported_value(1)); break;
        case 'q': return 0;
        default: printf("?\\n"); break;
        }
        fflush(stdout);
    }
    return 0;
}
`;

const SECRET_PATCH = `
#include <hotstack.h>
static int fixed_secret_value(int x) { return x * 100; }
HOTSTACK_PATCH(secret_value, fixed_secret_value);
`;

const EXPORTED_PATCH = `
#include <hotstack.h>
static int fixed_exported_value(int x) { return -x; }
HOTSTACK_PATCH(exported_value, fixed_exported_value);
`;

let work = '';
const procs = new Processes();
let cli: Cli;
/** The unstripped program, the stripped one (debuglink, no debug file beside it) and its debug file. */
let full = '';
let stripped = '';
let debug = '';
/** A debug file of a different build of the same source. */
let otherDebug = '';
/** A debug root holding the build-id layout, and one without anything. */
let idRoot = '';
let emptyRoot = '';
let buildId = '';

function ok(r: CliResult): CliResult {
  expectCli(r, { status: 0 });
  return r;
}

/** `hotstack ARGS` with HOTSTACK_DEBUG_ROOT = root (never the system's /usr/lib/debug). */
function hs(root: string, ...args: string[]): CliResult {
  return cli.raw(args, { env: { HOTSTACK_DEBUG_ROOT: root } });
}

/** Build prog.c into dir/prog (stripped, with .gnu_debuglink to prog.debug) and dir/prog.debug. */
function buildProgram(dir: string, offset: number): { full: string; stripped: string; debug: string } {
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'prog.c'), PROG);
  const f = join(dir, 'prog.full');
  run('gcc', ['-O2', '-g', '-fPIE', '-pie', '-rdynamic', '-fcf-protection=none', `-DOFFSET=${offset}`, '-Wl,--build-id', '-o', f, 'prog.c'], { cwd: dir });
  run('objcopy', ['--only-keep-debug', f, join(dir, 'prog.debug')]);
  const s = join(dir, 'prog');
  copyFileSync(f, s);
  run('strip', ['--strip-all', s]);
  run('objcopy', ['--add-gnu-debuglink=prog.debug', 'prog'], { cwd: dir });
  return { full: f, stripped: s, debug: join(dir, 'prog.debug') };
}

before(() => {
  work = mkdtempSync(join(tmpdir(), 'hotstack-debugfile-'));
  mkdirSync(join(work, 'state'));
  cli = new Cli(join(work, 'state'));
  const a = buildProgram(join(work, 'a'), 0);
  full = a.full;
  debug = a.debug;
  // The stripped program alone in its directory: its .gnu_debuglink leads nowhere.
  mkdirSync(join(work, 'bin'));
  stripped = join(work, 'bin', 'prog');
  copyFileSync(a.stripped, stripped);
  chmodSync(stripped, 0o755);
  otherDebug = buildProgram(join(work, 'b'), 1).debug;
  buildId = readBuildId(stripped);
  idRoot = join(work, 'debugroot');
  mkdirSync(join(idRoot, '.build-id', buildId.slice(0, 2)), { recursive: true });
  copyFileSync(debug, join(idRoot, '.build-id', buildId.slice(0, 2), `${buildId.slice(2)}.debug`));
  emptyRoot = join(work, 'empty');
  mkdirSync(emptyRoot);
  writeFileSync(join(work, 'secret.c'), SECRET_PATCH);
  writeFileSync(join(work, 'exported.c'), EXPORTED_PATCH);
});

after(async () => {
  await procs.stopAll();
  if (work) rmSync(work, { recursive: true, force: true });
});

describe('the fixture', () => {
  it('is stripped: .dynsym only; the debug file has the .symtab and NOBITS code; same build-id', () => {
    const names = (f: string) => listSections(f).map((s) => s.name);
    assert.ok(!names(stripped).includes('.symtab'), 'stripped program has no .symtab');
    assert.ok(names(stripped).includes('.dynsym'));
    assert.ok(names(stripped).includes('.gnu_debuglink'));
    assert.ok(names(debug).includes('.symtab'));
    assert.equal(listSections(debug).find((s) => s.name === '.text')?.type, 'NOBITS', 'the debug file holds no code');
    assert.equal(readBuildId(debug), buildId);
    assert.notEqual(readBuildId(otherDebug), buildId, 'the other build has another build-id');
  });
});

describe('hotstack build --base STRIPPED', () => {
  const out = (n: string) => join(work, `${n}.livepatch`);

  it('an exported function patches from .dynsym alone', () => {
    ok(hs(emptyRoot, 'build', '--base', stripped, '-o', out('exported'), join(work, 'exported.c')));
    const info = JSON.parse(ok(hs(emptyRoot, 'inspect', '--json', out('exported'))).stdout) as InspectJson;
    assert.deepEqual(info.funcs.map((f) => [f.name, f.oldSize]), [['exported_value', symbolInfo(full, 'exported_value').size]]);
  });

  it('a static function without a debug file: ENOENT with the nm -D and --debug-file hint', () => {
    const r = hs(emptyRoot, 'build', '--base', stripped, '-o', out('nodebug'), join(work, 'secret.c'));
    expectCli(r, { status: 1, stderr: /^hotstack build: Error 2: ENOENT: function secret_value is not a symbol of the base / });
    assert.match(r.stderr, new RegExp(`nm -D --defined-only ${stripped.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`));
    assert.match(r.stderr, /static functions need its debug file: give --debug-file FILE/);
    assert.doesNotMatch(r.stderr, /nm --defined-only/, 'not the hint for an unstripped base');
  });

  it('--debug-file supplies the .symtab; sizes and expected bytes come from the real program, not the debug file', () => {
    const r = ok(hs(emptyRoot, 'build', '--base', stripped, '--debug-file', debug, '--expect', '-o', out('secret'), join(work, 'secret.c')));
    assert.match(r.stdout, /secret_value: old \d+ bytes -> new \d+ bytes \(fixed_secret_value\); expects/);
    const info = JSON.parse(ok(hs(emptyRoot, 'inspect', '--json', out('secret'))).stdout) as InspectJson;
    const size = symbolInfo(full, 'secret_value').size;
    assert.equal(info.baseBuildId, buildId);
    assert.equal(info.funcs[0]!.name, 'secret_value');
    assert.equal(info.funcs[0]!.oldSize, size, 'old_size from the debug file\'s .symtab');
    const want = functionBytes(full, 'secret_value', info.funcs[0]!.expect!.len).toString('hex');
    assert.equal(info.funcs[0]!.expect!.bytes, want, 'expectation = the program\'s code bytes');
    assert.notEqual(want, '00'.repeat(info.funcs[0]!.expect!.len));
  });

  it('the build-id directory under HOTSTACK_DEBUG_ROOT is found automatically', () => {
    const r = ok(hs(idRoot, 'build', '--base', stripped, '-o', out('byid'), join(work, 'secret.c')));
    assert.match(r.stdout, /secret_value: old \d+ bytes/);
  });

  it('.gnu_debuglink: the debug file in the .debug/ subdirectory next to the program', () => {
    const dir = join(work, 'linked');
    mkdirSync(join(dir, '.debug'), { recursive: true });
    copyFileSync(stripped, join(dir, 'prog'));
    copyFileSync(debug, join(dir, '.debug', 'prog.debug'));
    ok(hs(emptyRoot, 'build', '--base', join(dir, 'prog'), '-o', out('linked'), join(work, 'secret.c')));
  });

  it('refuses --debug-file of another build, naming both build-ids', () => {
    const r = hs(idRoot, 'build', '--base', stripped, '--debug-file', otherDebug, '-o', out('other'), join(work, 'secret.c'));
    expectCli(r, { status: 1, stderr: /Error 22: EINVAL: --debug-file .*b\/prog\.debug has build-id [0-9a-f]{40}, but the base .* has build-id [0-9a-f]{40}/ });
    assert.ok(r.stderr.includes(readBuildId(otherDebug)) && r.stderr.includes(buildId), `names both build-ids:\n${r.stderr}`);
    assert.throws(() => readFileSync(out('other')), 'no payload written');
  });

  it('skips automatic candidates of another build or writable by others (then: the stripped hint)', () => {
    const wrong = join(work, 'wrongroot');
    mkdirSync(join(wrong, '.build-id', buildId.slice(0, 2)), { recursive: true });
    copyFileSync(otherDebug, join(wrong, '.build-id', buildId.slice(0, 2), `${buildId.slice(2)}.debug`));
    expectCli(hs(wrong, 'build', '--base', stripped, '-o', out('wrong'), join(work, 'secret.c')), { status: 1, stderr: /ENOENT: .*nm -D --defined-only/ });
    const open = join(work, 'openroot');
    const file = join(open, '.build-id', buildId.slice(0, 2), `${buildId.slice(2)}.debug`);
    mkdirSync(join(open, '.build-id', buildId.slice(0, 2)), { recursive: true });
    copyFileSync(debug, file);
    chmodSync(file, 0o666);
    expectCli(hs(open, 'build', '--base', stripped, '-o', out('open'), join(work, 'secret.c')), { status: 1, stderr: /ENOENT: .*nm -D --defined-only/ });
    chmodSync(file, 0o644);
    ok(hs(open, 'build', '--base', stripped, '-o', out('open'), join(work, 'secret.c')));
  });

  it('--debug-file that is missing or a directory: a clear error', () => {
    expectCli(hs(emptyRoot, 'build', '--base', stripped, '--debug-file', join(work, 'nope.debug'), '-o', out('x'), join(work, 'secret.c')),
      { status: 1, stderr: /Error 2: ENOENT: --debug-file .*nope\.debug does not exist/ });
    expectCli(hs(emptyRoot, 'build', '--base', stripped, '--debug-file', work, '-o', out('x'), join(work, 'secret.c')),
      { status: 1, stderr: /Error 22: EINVAL: --debug-file .* is not a regular file/ });
  });
});

describe('hotstack check --image STRIPPED', () => {
  it('with --debug-file the static function resolves; without, the upload fails', () => {
    const payload = join(work, 'secret.livepatch');
    const r = ok(hs(emptyRoot, 'check', '--image', stripped, '--debug-file', debug, payload));
    assert.match(r.stdout, /apply +secret +ok: applied/);
    expectCli(hs(emptyRoot, 'check', '--image', stripped, payload), { status: 1, stdout: /upload +secret +FAILED/ });
    expectCli(hs(emptyRoot, 'check', '--image', stripped, '--debug-file', otherDebug, payload), { status: 1, stderr: /EINVAL: --debug-file .* has build-id/ });
  });
});

describe('a live process of the stripped program', () => {
  it('is patched on its static function through the build-id directory, even after its file was deleted', async () => {
    const exe = join(work, 'live-prog');
    copyFileSync(stripped, exe);
    chmodSync(exe, 0o755);
    const p = await procs.start(exe);
    unlinkSync(exe); // the object is found by its build-id, not by its (now deleted) path
    assert.equal(await p.ask('s'), '4');
    const payload = join(work, 'secret.livepatch');
    const nope = hs(emptyRoot, '--pid', String(p.pid), 'load', payload);
    expectCli(nope, { status: 1, stdout: /Uploading .*\.\.\. failed/ });
    assert.match(nope.stderr, /secret_value/);
    assert.equal(await p.ask('s'), '4', 'nothing changed');
    expectCli(hs(idRoot, '--pid', String(p.pid), 'load', payload), { status: 0, stdout: /Applying secret\.\.\. completed/, stderr: '' });
    assert.equal(await p.ask('s'), '100');
    assert.equal(await p.ask('e'), '8', 'the exported function is untouched');
    expectCli(hs(idRoot, '--pid', String(p.pid), 'list'), { status: 0, stdout: /^secret {34}\| APPLIED {4}\| hotstack\.name=secret;hotstack\.patched=secret_value \| live-prog \(deleted\)$/m });
    expectCli(hs(idRoot, '--pid', String(p.pid), 'revert', 'secret'), { status: 0 });
    assert.equal(await p.ask('s'), '4');
    await p.stop();
  });
});
