/**
 * bin/hotstack picks the bundles (dist/bundle/, `npm run bundle`) or the
 * compiled modules (dist/src/): the bundles unless they are older than the
 * compiled CLI (tsc run alone since: they would run stale code) or
 * HOTSTACK_NO_BUNDLE=1. Checked on a copy of the launcher next to stand-in
 * modules that say which was loaded; then the real CLI, from each side,
 * answers --version and builds a payload (both find the package's files).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { HOTSTACK_BIN } from './helpers/repo.js';
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
  const pool = 'export function prestartFleet() {}\nexport function releaseEarlyWorkers() {}\n';
  const main = (side: string): string =>
    `export async function main() { process.stdout.write('${side}\\n'); return 0; }\nexport function guardOutput() { return { status: (n) => n }; }\n`;
  mkdirSync(join(root, 'dist', 'src', 'cli'), { recursive: true });
  mkdirSync(join(root, 'dist', 'src', 'fleet'), { recursive: true });
  mkdirSync(join(root, 'dist', 'bundle'), { recursive: true });
  writeFileSync(join(root, 'dist', 'src', 'fleet', 'pool.js'), pool);
  writeFileSync(join(root, 'dist', 'src', 'cli', 'main.js'), main('modules'));
  writeFileSync(join(root, 'dist', 'bundle', 'pool.js'), pool);
  writeFileSync(join(root, 'dist', 'bundle', 'main.js'), main('bundle'));
  writeFileSync(join(root, 'package.json'), '{"type":"module"}\n');
  return { bin: join(root, 'bin', 'hotstack'), src: join(root, 'dist', 'src', 'cli', 'main.js'), bundle: join(root, 'dist', 'bundle', 'main.js') };
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
