/**
 * bin/hotstack picks the bundles (dist/bundle/, `npm run bundle`) or the
 * compiled modules (dist/src/): the bundles unless they are older than the
 * compiled CLI (tsc run alone since: they would run stale code) or
 * HOTSTACK_NO_BUNDLE=1. Checked on a copy of the launcher next to stand-in
 * modules that say which was loaded; then the real CLI, from each side,
 * answers --version and builds a payload (both find the package's files).
 * The bundles' V8 code caches (bin/bundle-loader.mjs): taken by a single
 * command and by a fleet (its own variant, workers included); one whose
 * bundle changed since is not used; a corrupt one is refused by V8 and the
 * command runs all the same.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { HOTSTACK_BIN, REPO_ROOT } from './helpers/repo.js';
import { buildAll, run } from './helpers/toolchain.js';

let work = '';
let files: Record<string, string> = {};

before(() => {
  work = mkdtempSync(join(tmpdir(), 'hotstack-launcher-'));
  files = buildAll();
});

after(() => {
  if (work) rmSync(work, { recursive: true, force: true });
});

/** A launcher copy with stand-in modules: main() prints which side it came from. */
function fakeInstall(): { bin: string; src: string; bundle: string } {
  const root = mkdtempSync(join(work, 'install-'));
  mkdirSync(join(root, 'bin'));
  copyFileSync(HOTSTACK_BIN, join(root, 'bin', 'hotstack'));
  copyFileSync(join(dirname(HOTSTACK_BIN), 'bundle-loader.mjs'), join(root, 'bin', 'bundle-loader.mjs'));
  const pool = (cjs: boolean): string => cjs
    ? 'exports.prestartFleet = () => false;\nexports.releaseEarlyWorkers = () => {};\n'
    : 'export function prestartFleet() { return false; }\nexport function releaseEarlyWorkers() {}\n';
  const main = (side: string, cjs: boolean): string => cjs
    ? `exports.main = async () => { process.stdout.write('${side}\\n'); return 0; };\nexports.guardOutput = () => ({ status: (n) => n });\n`
    : `export async function main() { process.stdout.write('${side}\\n'); return 0; }\nexport function guardOutput() { return { status: (n) => n }; }\n`;
  mkdirSync(join(root, 'dist', 'src', 'cli'), { recursive: true });
  mkdirSync(join(root, 'dist', 'src', 'fleet'), { recursive: true });
  mkdirSync(join(root, 'dist', 'bundle'), { recursive: true });
  writeFileSync(join(root, 'dist', 'src', 'fleet', 'pool.js'), pool(false));
  writeFileSync(join(root, 'dist', 'src', 'cli', 'main.js'), main('modules', false));
  writeFileSync(join(root, 'dist', 'bundle', 'pool.cjs'), pool(true));
  writeFileSync(join(root, 'dist', 'bundle', 'main.cjs'), main('bundle', true));
  writeFileSync(join(root, 'package.json'), '{"type":"module"}\n');
  return { bin: join(root, 'bin', 'hotstack'), src: join(root, 'dist', 'src', 'cli', 'main.js'), bundle: join(root, 'dist', 'bundle', 'main.cjs') };
}

function launch(bin: string, env: Record<string, string> = {}, args: string[] = []): string {
  const r = spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', env: { ...process.env, HOTSTACK_NO_BUNDLE: '', ...env }, timeout: 60_000 });
  assert.equal(r.status, 0, `${r.stdout}${r.stderr}`);
  return r.stdout;
}

describe('launcher: bundles or compiled modules', () => {
  it('the bundle when it is newer than the compiled CLI, the modules when it is older, missing, or HOTSTACK_NO_BUNDLE=1', () => {
    const f = fakeInstall();
    const t = Date.now() / 1000;
    utimesSync(f.src, t - 10, t - 10);
    utimesSync(f.bundle, t - 5, t - 5);
    assert.equal(launch(f.bin), 'bundle\n');
    assert.equal(launch(f.bin, { HOTSTACK_NO_BUNDLE: '1' }), 'modules\n');
    // tsc ran after the bundle was made: the bundle is stale.
    utimesSync(f.src, t, t);
    assert.equal(launch(f.bin), 'modules\n');
    rmSync(f.bundle);
    assert.equal(launch(f.bin), 'modules\n');
  });

  for (const side of ['bundle', 'modules'] as const) {
    it(`the real CLI from the ${side}: --version from package.json, a payload built with the package's include/`, () => {
      const env = { HOTSTACK_NO_BUNDLE: side === 'modules' ? '1' : '' };
      assert.match(launch(HOTSTACK_BIN, env, ['--version']), /^\d+\.\d+\.\d+\n$/);
      const src = join(work, `${side}-fix.c`);
      // The build adds the package's include/ to the compiler's path: the header must be found.
      writeFileSync(src, '#include <hotstack.h>\n#ifndef HOTSTACK_PAYLOAD_VERSION\n#error not hotstack.h\n#endif\nstatic int my_minor(void) { return 7; }\nHOTSTACK_PATCH(minor_version, my_minor);\n');
      const out = join(work, `${side}-fix.livepatch`);
      launch(HOTSTACK_BIN, env, ['build', '--base', files.base!, '-o', out, src]);
      run('readelf', ['-S', out]);
    });
  }
});

describe('launcher: the bundles\' code caches', () => {
  const CACHE = { HOTSTACK_TEST_MODE: '1', HOTSTACK_TEST_CODE_CACHE: '1' };
  const said = (args: string[], env: Record<string, string> = {}): string[] => {
    const r = spawnSync(process.execPath, [HOTSTACK_BIN, ...args], { encoding: 'utf8', env: { ...process.env, HOTSTACK_NO_BUNDLE: '', ...CACHE, ...env }, timeout: 60_000 });
    assert.equal(r.status, 0, `${r.stdout}${r.stderr}`);
    return r.stderr.split('\n').filter((l) => l.startsWith('hotstack: code cache')).sort();
  };

  it('a single command takes the default caches, a fleet the no-opt ones, its worker included', () => {
    assert.deepEqual(said(['--version']), ['hotstack: code cache of main (opt): used', 'hotstack: code cache of pool (opt): used']);
    // A fleet of two processes that are not ours: nothing to do, but the worker starts and loads.
    const pids = [spawn('sleep', ['30']), spawn('sleep', ['30'])];
    try {
      const lines = said(['--pid', pids.map((p) => p.pid).join(','), '--jobs', '2', 'list'], { HOTSTACK_STATE_DIR: join(work, 'state-cc') });
      assert.deepEqual(lines, [
        'hotstack: code cache of main (no-opt): used',
        'hotstack: code cache of pool (opt): used',
        'hotstack: code cache of worker (no-opt): used',
      ]);
    } finally {
      for (const p of pids) p.kill('SIGKILL');
    }
  });

  it('a bundle changed since its cache was made, or a damaged cache: not used (V8 would crash on the latter); the command works either way', () => {
    // A copy of the package's bin/ and dist/bundle/ (the loader finds the bundles next to itself).
    // A space in the path: the loader is given file URLs, whose paths are percent-encoded.
    const root = mkdtempSync(join(work, 'cc dir-'));
    cpSync(join(REPO_ROOT, 'bin'), join(root, 'bin'), { recursive: true });
    cpSync(join(REPO_ROOT, 'dist', 'bundle'), join(root, 'dist', 'bundle'), { recursive: true });
    mkdirSync(join(root, 'dist', 'src', 'cli'), { recursive: true });
    writeFileSync(join(root, 'dist', 'src', 'cli', 'main.js'), '');
    utimesSync(join(root, 'dist', 'src', 'cli', 'main.js'), 0, 0);
    cpSync(join(REPO_ROOT, 'package.json'), join(root, 'package.json'));
    symlinkSync(join(REPO_ROOT, 'node_modules'), join(root, 'node_modules'));
    const run = (): string[] => {
      const r = spawnSync(process.execPath, [join(root, 'bin', 'hotstack'), '--version'], { encoding: 'utf8', env: { ...process.env, HOTSTACK_NO_BUNDLE: '', ...CACHE }, timeout: 60_000 });
      assert.equal(r.status, 0, `${r.stdout}${r.stderr}`);
      assert.match(r.stdout, /^\d+\.\d+\.\d+\n$/);
      return r.stderr.split('\n').filter((l) => l.startsWith('hotstack: code cache of main'));
    };
    assert.deepEqual(run(), ['hotstack: code cache of main (opt): used']);
    // One byte of the bundle changed (the length kept, all V8 would check): the cache is not its own.
    const bundle = join(root, 'dist', 'bundle', 'main.cjs');
    const original = readFileSync(bundle);
    const changed = Buffer.from(original);
    const at = changed.indexOf('is the package complete?');
    changed[at] = 'I'.charCodeAt(0);
    writeFileSync(bundle, changed);
    assert.deepEqual(run(), ['hotstack: code cache of main (opt): none']);
    // The bundle back: used again; then the cache's bytes damaged (V8 took them for code and crashed).
    writeFileSync(bundle, original);
    assert.deepEqual(run(), ['hotstack: code cache of main (opt): used']);
    const cache = readFileSync(`${bundle}.opt.cache`);
    cache.fill(0x5a, 64, 4096);
    writeFileSync(`${bundle}.opt.cache`, cache);
    assert.deepEqual(run(), ['hotstack: code cache of main (opt): none']);
    // Flags other than the cache's (a V8 option given to node): V8 refuses it.
    writeFileSync(`${bundle}.opt.cache`, readFileSync(join(REPO_ROOT, 'dist', 'bundle', 'main.cjs.opt.cache')));
    const r = spawnSync(process.execPath, ['--no-opt', join(root, 'bin', 'hotstack'), '--version'], { encoding: 'utf8', env: { ...process.env, HOTSTACK_NO_BUNDLE: '', ...CACHE }, timeout: 60_000 });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, /code cache of main \(opt\): rejected/);
  });
});
