// `npm run bundle` (after tsc): the bundles bin/hotstack loads, in dist/bundle/.
//
// - main.cjs (the CLI), pool.cjs (what bin/hotstack needs to start a fleet's workers
//   before the CLI loads) and worker.cjs (a fleet worker), each one CommonJS file made
//   by esbuild from the compiled modules in dist/src/ (one file parses in half the time
//   of 120 modules); worker.js, the worker's entry, loads worker.cjs.
// - A V8 code cache for each (NAME.cjs.VARIANT.cache, with the SHA-256 of the bundle it
//   was made from and of itself in NAME.cjs.VARIANT.json): every function compiled, so that a command compiles none
//   on first use, inside a stop of the target included. V8 takes a cache only under the
//   flags it was made with: 'opt' is the default, 'no-opt' what a fleet runs under
//   (src/fleet/pool.ts turns the optimizing compiler off); each is made in a process of
//   its own with those flags. See bin/bundle-loader.mjs.
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import Module from 'node:module';
import { setFlagsFromString } from 'node:v8';
import { Script } from 'node:vm';

const OUT = 'dist/bundle';
/** The bundles and the code caches each needs (see bin/hotstack and src/fleet/pool.ts). */
const CACHES = { main: ['opt', 'no-opt'], pool: ['opt'], worker: ['no-opt'] };

if (process.argv[2] === '--cache') {
  makeCache(process.argv[3], process.argv[4]);
} else {
  await bundle();
}

async function bundle() {
  const { build } = await import('esbuild');
  rmSync(OUT, { recursive: true, force: true });
  await build({
    entryPoints: { main: 'dist/src/cli/main.js', pool: 'dist/src/fleet/pool.js', worker: 'dist/src/fleet/worker.js' },
    bundle: true,
    platform: 'node',
    target: 'node20',
    format: 'cjs',
    outdir: OUT,
    outExtension: { '.js': '.cjs' },
    // Native code and WebAssembly, loaded from their packages at run time.
    external: ['koffi', 'iced-x86'],
    // The modules find files next to themselves (package.json, include/, the worker).
    define: { 'import.meta.url': '__hotstack_url' },
    banner: { js: "const __hotstack_url = require('node:url').pathToFileURL(__filename).href;" },
    logLevel: 'warning',
  });
  writeFileSync(`${OUT}/worker.js`, "// A fleet worker's entry: the worker bundle, with its code cache (see bin/bundle-loader.mjs).\n"
    + "import { loadBundle } from '../../bin/bundle-loader.mjs';\n\nloadBundle(new URL('.', import.meta.url), 'worker', 'no-opt');\n");
  for (const [name, variants] of Object.entries(CACHES)) {
    for (const variant of variants) {
      const r = spawnSync(process.execPath, [new URL(import.meta.url).pathname, '--cache', name, variant], { encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`code cache of ${name} (${variant}): ${r.stderr}`);
    }
  }
}

/** Compile bundle `name` with every function eager, under the flags of `variant`, and keep V8's code cache of it. */
function makeCache(name, variant) {
  if (variant === 'no-opt') setFlagsFromString('--no-opt');
  const file = `${OUT}/${name}.cjs`;
  const bytes = readFileSync(file);
  const source = bytes.toString('utf8');
  // Eager for this compile only: the flags in force when the cache is made are the ones V8
  // checks when it is used, and commands run with lazy compilation.
  setFlagsFromString('--no-lazy');
  const script = new Script(Module.wrap(source), { filename: file });
  setFlagsFromString('--lazy');
  const cache = script.createCachedData();
  writeFileSync(`${file}.${variant}.cache`, cache);
  const sha256 = (b) => createHash('sha256').update(b).digest('hex');
  writeFileSync(`${file}.${variant}.json`, `${JSON.stringify({ source: sha256(bytes), cache: sha256(cache) })}\n`);
}
