// Loads one of hotstack's bundles (dist/bundle/NAME.cjs, made by scripts/bundle.mjs)
// with the V8 code cache made for it at build time: the bundle's functions are then
// bytecode already, so none is compiled on first use. That matters most inside a
// stop of the target, where a cold command compiled every function it ran (about
// half of a fresh `hotstack apply`'s pause: 1.26 ms against 0.65 ms measured).
//
// A cache is used only when it was made for this very bundle and is intact: the SHA-256
// of the bundle it was made from and of the cache itself are recorded next to it (V8
// checks a cache against the source's length only, and takes damaged bytes for code: a
// corrupt cache crashed the process), about 1 ms for both; and for the V8 flags now in
// force (V8 refuses it otherwise, and the bundle is compiled as usual). Imported by
// bin/hotstack and by the worker's entry (dist/bundle/worker.js).
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import Module, { createRequire } from 'node:module';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Script } from 'node:vm';

/**
 * The exports of bundle `name` in directory `dir` (a file URL or path).
 * `variant`: which code cache, 'opt' (the default flags) or 'no-opt'
 * (a fleet turns V8's optimizing compiler off before it loads anything).
 */
export function loadBundle(dir, name, variant) {
  const base = dir instanceof URL ? fileURLToPath(dir) : dir;
  const file = join(base, `${name}.cjs`);
  const bytes = readFileSync(file);
  const source = bytes.toString('utf8');
  const cachedData = codeCache(file, bytes, variant);
  const script = new Script(Module.wrap(source), { filename: file, cachedData });
  // Test switch (with HOTSTACK_TEST_MODE=1): say whether the cache was taken.
  if (process.env.HOTSTACK_TEST_MODE === '1' && process.env.HOTSTACK_TEST_CODE_CACHE === '1') {
    process.stderr.write(`hotstack: code cache of ${name} (${variant}): ${!cachedData ? 'none' : script.cachedDataRejected ? 'rejected' : 'used'}\n`);
  }
  const module = { exports: {} };
  const fn = script.runInThisContext();
  fn.call(module.exports, module.exports, createRequire(file), module, file, join(base, '.'));
  return module.exports;
}

function codeCache(file, bytes, variant) {
  try {
    const meta = JSON.parse(readFileSync(`${file}.${variant}.json`, 'utf8'));
    if (meta.source !== sha256(bytes)) return undefined;
    const cache = readFileSync(`${file}.${variant}.cache`);
    return meta.cache === sha256(cache) ? cache : undefined;
  } catch {
    return undefined;
  }
}

function sha256(b) {
  return createHash('sha256').update(b).digest('hex');
}
